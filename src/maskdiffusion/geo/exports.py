"""Export label maps as vector polygons (GeoPackage, GeoJSON) and as COCO JSON.

Polygons follow pixel edges exactly (:func:`rasterio.features.shapes`) and are placed with
the image's transform and CRS, so they overlay the source image in a GIS; an image
georeferenced by ground control points only gets the affine transform fitted to them.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyogrio
import shapely
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.features import shapes
from rasterio.transform import Affine, from_gcps

from ..core.classes import ClassSpec, as_class_specs
from ..core.labels import UNLABELLED
from ..errors import BadInputError, OutputError
from .atomic import atomic_output, write_json
from .raster_io import GeoInfo

__all__ = ["label_polygons", "polygon_placement", "rle_decode", "rle_encode", "write_coco", "write_coco_images",
           "write_polygons"]

_VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON"}


def _class_array(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "ui":
        raise BadInputError(f"labels must be a 2-D integer label map, got {labels.dtype} {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > n_classes):
        raise BadInputError(f"label values must be 0 (unlabelled) to {n_classes}, found {labels.min()}-{labels.max()}")
    return labels.astype(np.int32 if n_classes > 255 else np.uint8, copy=False)


def label_polygons(labels: np.ndarray, transform: Affine | None = None,
                   connectivity: int = 4) -> tuple[list[shapely.Polygon], np.ndarray]:
    """Trace each connected region of equal label as a polygon (holes included).

    Returns the polygons, in map coordinates when ``transform`` is given (else pixel
    coordinates, x = column, y = row, pixel corners on integers), and their label values.
    """
    labels = np.asarray(labels)
    transform = Affine.identity() if transform is None else transform
    polygons, values = [], []
    for geometry, value in shapes(labels, connectivity=connectivity, transform=transform):
        polygons.append(shapely.geometry.shape(geometry))
        values.append(int(value))
    return polygons, np.asarray(values, dtype=np.int64)


def polygon_placement(geo: GeoInfo | None) -> tuple[Affine | None, str | None]:
    """The transform that places polygons in map coordinates, and a note when it is not the file's own.

    The image's affine transform when it has one; for an image georeferenced only by ground
    control points, the affine transform fitted to them (:func:`rasterio.transform.from_gcps`),
    with a note saying so; ``None`` (pixel coordinates) otherwise, with a note saying why when
    the image has GCPs that cannot be used.
    """
    if geo is None:
        return None, None
    if geo.transform is not None:
        return Affine(*geo.transform[:6]), None
    if not geo.gcps:
        return None, None
    if len(geo.gcps) < 3:
        return None, (f"polygons are in pixel coordinates: the image has {len(geo.gcps)} ground control "
                      "point(s), at least 3 are needed to fit a transform")
    transform = from_gcps([GroundControlPoint(*g) for g in geo.gcps])
    return transform, (f"polygons are placed with the affine transform fitted to the image's {len(geo.gcps)} "
                       "ground control points (the label rasters keep the points themselves)")


def write_polygons(path, labels: np.ndarray, classes: Sequence[ClassSpec], geo: GeoInfo | None = None,
                   dissolve: bool = False, connectivity: int = 4, layer: str = "segmentation") -> Path:
    """Write the label map as polygons with their class: GeoPackage (``.gpkg``) or ``.geojson``.

    One feature per connected region of a class (``dissolve=True``: one MultiPolygon per
    class) with fields ``label`` (the label value k), ``class_name``, ``color`` (``#rrggbb``)
    and ``area`` (map units, or pixels without a transform); unlabelled pixels (0) give no
    feature. The CRS of ``geo`` is kept; polygons are placed by :func:`polygon_placement`.
    Atomic: written in memory, then to disk, checked by reading its feature count back.
    """
    path = Path(path)
    try:
        driver = _VECTOR_DRIVERS[path.suffix.lower()]
    except KeyError:
        suffixes = ", ".join(_VECTOR_DRIVERS)
        raise BadInputError(f"cannot write {path}: unsupported suffix; use one of {suffixes}") from None
    classes = as_class_specs(classes)
    labels = _class_array(labels, len(classes))
    transform, _ = polygon_placement(geo)
    polygons, values = label_polygons(labels, transform, connectivity)
    keep = values != UNLABELLED
    polygons, values = [p for p, k in zip(polygons, keep) if k], values[keep]
    if dissolve:
        present = np.unique(values)
        polygons = [shapely.MultiPolygon([p for p, v in zip(polygons, values) if v == k]) for k in present]
        values = present
    geometry = np.asarray(polygons, dtype=object)
    fields = {
        "label": values.astype(np.int32),
        "class_name": np.array([classes[v - 1].name for v in values], dtype=object),
        "color": np.array(["#{:02x}{:02x}{:02x}".format(*classes[v - 1].color) for v in values], dtype=object),
        "area": shapely.area(geometry).astype(np.float64),
    }
    crs = CRS.from_user_input(geo.crs).to_wkt() if geo is not None and geo.crs and transform is not None else None
    memory = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="'crs' was not provided")
        pyogrio.raw.write(memory, shapely.to_wkb(geometry), list(fields.values()), list(fields), layer=layer,
                          driver=driver, geometry_type="MultiPolygon" if dissolve else "Polygon", crs=crs)
    with atomic_output(path, check=lambda tmp: _reads_back(tmp, path, len(geometry))) as tmp, open(tmp, "wb") as f:
        f.write(memory.getbuffer())
    return path


def _reads_back(tmp: Path, target: Path, n_features: int) -> None:
    """Raise :class:`OutputError` unless the vector file ``tmp`` opens with ``n_features`` features."""
    try:
        found = pyogrio.read_info(tmp)["features"]
    except pyogrio.errors.DataSourceError:
        found = None
    if found != n_features:
        raise OutputError(f"cannot write {target}: the written file does not read back as written; "
                          "nothing was written or replaced")


def rle_encode(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE of a binary mask: run lengths in column-major order, zeros first."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_decode(rle: dict) -> np.ndarray:
    """The binary mask of an uncompressed COCO RLE (inverse of :func:`rle_encode`)."""
    height, width = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.arange(counts.size) % 2 == 1
    return np.repeat(values, counts).reshape((height, width), order="F")


def _bbox(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _coco_polygons(polygons: list[shapely.Polygon]) -> list[list[float]]:
    return [np.asarray(p.exterior.coords[:-1], dtype=np.float64).ravel().tolist() for p in polygons]


def write_coco(path, labels: np.ndarray, classes: Sequence[ClassSpec], image_info: dict | str,
               mode: str = "rle") -> Path:
    """Write the label map as COCO JSON: one annotation per class present in the image.

    ``image_info`` is the COCO image entry (at least ``file_name``; ``id`` defaults to 1,
    ``width`` and ``height`` come from ``labels``), or just the file name. Category ids are
    the label values (k for the k-th class); unlabelled pixels belong to no annotation.
    ``mode="rle"`` stores exact masks as uncompressed RLE (column-major, as
    COCO defines it); ``mode="polygons"`` stores the outlines of the regions (COCO polygons
    cannot hold holes, so enclosed regions of other classes are covered by the outline and
    appear in their own annotations too). Atomic.
    """
    return write_coco_images(path, [(labels, image_info)], classes, mode)


def write_coco_images(path, images, classes: Sequence[ClassSpec], mode: str = "rle") -> Path:
    """Write several label maps as one COCO JSON (a dataset): ``images`` yields
    ``(labels, image_info)`` pairs as :func:`write_coco` takes them, read one at a time; image
    ids default to 1, 2, ... Atomic.
    """
    if mode not in ("rle", "polygons"):
        raise BadInputError(f"COCO mode must be 'rle' or 'polygons', got {mode!r}")
    classes = as_class_specs(classes)
    entries, annotations = [], []
    for n, (labels, image_info) in enumerate(images, start=1):
        labels = _class_array(labels, len(classes))
        image = {"file_name": image_info} if isinstance(image_info, str) else dict(image_info)
        image.setdefault("id", n)
        image.update(height=int(labels.shape[0]), width=int(labels.shape[1]))
        entries.append(image)
        annotations += _annotations(labels, image["id"], len(annotations) + 1, mode)
    coco = {
        "info": {"description": "semantic segmentation written by napari-maskdiffusion"},
        "images": entries,
        "categories": [{"id": k, "name": c.name, "supercategory": "", "color": list(c.color)}
                       for k, c in enumerate(classes, start=1)],
        "annotations": annotations,
    }
    return write_json(path, coco)


def _annotations(labels: np.ndarray, image_id, first_id: int, mode: str) -> list[dict]:
    """One COCO annotation per class present in ``labels``, numbered from ``first_id``."""
    if mode == "polygons":
        polygons, values = label_polygons(labels)
    annotations = []
    for k in np.unique(labels):
        if k == UNLABELLED:
            continue
        mask = labels == k
        if mode == "rle":
            segmentation = rle_encode(mask)
        else:
            segmentation = _coco_polygons([p for p, v in zip(polygons, values) if v == k])
        annotations.append({
            "id": first_id + len(annotations),
            "image_id": image_id,
            "category_id": int(k),
            "segmentation": segmentation,
            "area": int(mask.sum()),
            "bbox": _bbox(mask),
            "iscrowd": 0,
        })
    return annotations

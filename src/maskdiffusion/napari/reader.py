"""npe2 reader: GeoTIFFs, ISPRS Potsdam tiles (with ``.tfw``), exported label maps and bundles.

Images keep their georeference in ``layer.metadata["georeference"]``. A multi-band image that
is not RGB (an ISPRS RGBIR tile) opens as two layers: the band stack ``(bands, H, W)``,
which the annotator segments with a band choice, and an RGB view of it.
Label maps written by this plugin open as a semantic map, ISPRS colour-coded labels
(``*_label*.tif``) as a semantic map of the Potsdam classes, and a bundle (its
``classes.json``) as its class layers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, preset_classes
from . import layers as L

__all__ = ["get_reader", "image_layer_data", "read_path"]

_TIFF = (".tif", ".tiff")
_BUNDLE_FILE = "classes.json"
_PER_CLASS_KEYS = ("classes", "kind", "class", "prompt", "prompts", "color", "index")


def get_reader(path):
    """Return :func:`read_path` for a TIFF or a bundle's ``classes.json``, else ``None``."""
    if isinstance(path, (list, tuple)):
        if not path or not all(get_reader(p) for p in path):
            return None
        return read_path
    p = Path(path)
    if p.suffix.lower() in _TIFF and p.is_file():
        return read_path
    if p.name == _BUNDLE_FILE and _is_bundle(p.parent):
        return read_path
    return None


def read_path(path) -> list[tuple]:
    """Layer-data tuples for one path or a list of paths."""
    if isinstance(path, (list, tuple)):
        return [t for p in path for t in read_path(p)]
    p = Path(path)
    if p.name == _BUNDLE_FILE:
        return read_bundle(p.parent)
    return read_tiff(p)


def _is_bundle(folder: Path) -> bool:
    try:
        data = json.loads((folder / _BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("software") == L.SOFTWARE and "bundle" in data


def _tags(path: Path) -> tuple[dict, int, str, dict | None]:
    import rasterio

    with rasterio.open(path) as src:
        try:
            colormap = src.colormap(1)
        except ValueError:
            colormap = None
        return src.tags(), src.count, src.dtypes[0], colormap


def read_tiff(path: Path) -> list[tuple]:
    """A TIFF as layers: an exported label map, ISPRS labels, or an image."""
    from ..geo.raster_io import read_image

    tags, count, dtype, colormap = _tags(path)
    if "CLASSES" in tags and count == 1:
        return [_labels_layer(path, tags, colormap)]
    if count == 3 and dtype == "uint8" and "_label" in path.stem.lower():
        return [_isprs_labels_layer(path)]
    image, geo = read_image(path)
    return image_layer_data(image, geo, path.stem)


def _labels_layer(path: Path, tags: dict, colormap: dict | None) -> tuple:
    from ..geo.raster_io import read_image

    labels, geo = read_image(path)
    names = json.loads(tags["CLASSES"])
    meta = json.loads(tags.get("MASKDIFFUSION_METADATA", "{}") or "{}")
    colors = [tuple(colormap[i][:3]) if colormap and i in colormap else None for i in range(len(names))]
    specs = {d["name"]: ClassSpec.from_dict(d) for d in meta.get("classes", []) if isinstance(d, dict) and "name" in d}
    classes = [specs.get(n) or ClassSpec(n, (), c) for n, c in zip(names, colors)]
    if classes and classes[0].name == L.UNLABELLED.name:
        data, classes = labels, classes[1:]
    else:
        data = labels.astype(np.uint16 if len(classes) >= 255 else np.uint8) + 1
    kind = meta.get("kind")
    meta = {k: v for k, v in meta.items() if k not in _PER_CLASS_KEYS}
    if geo.transform is not None:
        meta["georeference"] = geo.to_dict()
    if len(classes) == 1 and kind == L.CLASS:
        spec = classes[0]
        data = (data == 1).astype(np.uint8)
        kwargs = {"name": spec.name, "colormap": L.class_colormap(spec.color), "opacity": 0.6,
                  "metadata": L.class_metadata({**meta, "software": L.SOFTWARE}, spec, 0)}
        return data, kwargs, "labels"
    return L.semantic_layer_data(data, classes, meta, name=path.stem)


def _isprs_labels_layer(path: Path) -> tuple:
    from ..geo.isprs import decode_isprs_labels
    from ..geo.raster_io import read_image

    rgb, geo = read_image(path)
    index, _ = decode_isprs_labels(rgb)
    meta = {"source": str(path)}
    if geo.transform is not None:
        meta["georeference"] = geo.to_dict()
    return L.semantic_layer_data((index + 1).astype(np.uint8), preset_classes("potsdam6"), meta, name=path.stem)


def image_layer_data(image: np.ndarray, geo=None, name: str = "image", metadata: dict | None = None) -> list[tuple]:
    """Image layer tuples for an (H, W) or (H, W, bands) array read from a raster.

    Gray and RGB(A) give one layer; other band counts the band stack (bands first, with
    ``band_axis`` and ``band_names`` in its metadata) and an RGB view of three of its bands.
    """
    meta = dict(metadata or {})
    if geo is not None:
        if geo.transform is not None or geo.crs:
            meta["georeference"] = geo.to_dict()
        if geo.source:
            meta.setdefault("source", geo.source)
    n = 1 if image.ndim == 2 else image.shape[2]
    names = list(geo.band_names) if geo is not None and geo.band_names and len(geo.band_names) == n else None
    limits = _display_limits(image)
    if n == 1:
        return [(image if image.ndim == 2 else image[..., 0], {"name": name, "metadata": meta, **limits}, "image")]
    if n == 3 or (n == 4 and (names is None or [s.upper() for s in names] == ["R", "G", "B", "A"])):
        meta["band_names"] = names or ["R", "G", "B", "A"][:n]
        return [(image, {"name": name, "rgb": True, "metadata": meta, **limits}, "image")]
    names = names or [f"band {i + 1}" for i in range(n)]
    stack = np.moveaxis(image, -1, 0)
    stack_meta = {**meta, "band_axis": 0, "band_names": names}
    layer_image = L.LayerImage(name, image.shape[:2], 0, tuple(names), (1.0, 1.0), (0.0, 0.0))
    bands = layer_image.default_bands()
    view = np.ascontiguousarray(image[..., list(bands)])
    view_meta = {**meta, "band_names": [names[b] for b in bands]}
    return [
        (stack, {"name": name, "metadata": stack_meta, "axis_labels": ("band", "y", "x"), "visible": False,
                 **limits}, "image"),
        (view, {"name": f"{name} ({''.join(names[b] for b in bands)})", "rgb": True, "metadata": view_meta,
                **limits}, "image"),
    ]


def _display_limits(image: np.ndarray) -> dict:
    """Contrast limits that show uint16 and float imagery (uint8 keeps napari's default)."""
    if image.dtype == np.uint8 or image.size == 0:
        return {}
    sample = image[:: max(1, image.shape[0] // 512), :: max(1, image.shape[1] // 512)]
    lo, hi = np.nanpercentile(sample, (1, 99)).astype(float)
    return {"contrast_limits": (lo, hi if hi > lo else lo + 1)}


def read_bundle(folder: Path) -> list[tuple]:
    """The class layers of a bundle written by :func:`maskdiffusion.napari.writers.write_bundle`."""
    from ..geo.raster_io import read_image

    info = json.loads((folder / _BUNDLE_FILE).read_text(encoding="utf-8"))
    base = {k: v for k, v in info.items() if k not in ("classes", "bundle", "semantic", "merge_rule")}
    out = []
    for k, entry in enumerate(info["classes"]):
        spec = ClassSpec.from_dict(entry)
        labels, _ = read_image(folder / entry["file"])
        kwargs = {"name": spec.name, "colormap": L.class_colormap(spec.color), "opacity": 0.6,
                  "metadata": L.class_metadata(base, spec, k)}
        out.append(((labels != 0).astype(np.uint8), kwargs, "labels"))
    return out

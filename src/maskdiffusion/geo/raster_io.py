"""Read images and write label rasters with rasterio, keeping their georeference.

Reading accepts GeoTIFF, TIFF with a world file (``.tfw``, ``.tifw``, ``.wld``), PNG and
JPEG, in their own pixel type. Writing is atomic and checked: GDAL writes the file in memory,
Python writes it to a temporary file beside the target (so a full disk is an error that says
so), it is read back and compared, and only then renamed onto the target; a failed write
leaves no file behind and an existing file untouched.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.transform import Affine
from rasterio.windows import Window

from ..core.classes import ClassSpec, as_class_specs
from ..core.labels import UNLABELLED, UNLABELLED_NAME, label_dtype, label_values, to_index
from ..errors import BadInputError, OutputError
from .atomic import atomic_output, to_jsonable, write_json

__all__ = [
    "GeoInfo",
    "ImageInfo",
    "ImageReadError",
    "POTSDAM_CRS",
    "check_sidecar_free",
    "image_info",
    "image_reference",
    "page_count",
    "read_class_names",
    "read_label_info",
    "read_image",
    "read_input",
    "read_window",
    "referenced_image",
    "sidecar_path",
    "write_isprs_rgb",
    "write_labels",
    "write_raster",
    "write_sidecar",
]

#: CRS of the ISPRS Potsdam tiles (UTM zone 33N); their world files do not say it.
POTSDAM_CRS = "EPSG:32633"

_POTSDAM_NAME = re.compile(r"top_potsdam_\d+_\d+", re.IGNORECASE)
_ISPRS_BANDS = {"RGBIR": ("R", "G", "B", "IR"), "IRRG": ("IR", "R", "G"), "RGB": ("R", "G", "B")}
_ISPRS_SUFFIX = re.compile(r"_(RGBIR|IRRG|RGB)$", re.IGNORECASE)
_INTERP_NAMES = {ColorInterp.red: "R", ColorInterp.green: "G", ColorInterp.blue: "B", ColorInterp.alpha: "A"}
_GTIFF = {".tif": "GTiff", ".tiff": "GTiff"}
_LABEL_DRIVERS = {**_GTIFF, ".png": "PNG"}


class ImageReadError(BadInputError):
    """An image that cannot be read: missing, not an image, truncated or of an unsupported type."""


@dataclass
class GeoInfo:
    """Where an image lies on the ground, in JSON-ready form.

    crs: ``"EPSG:xxxx"`` or WKT, ``None`` when unknown.
    transform: the affine pixel-to-map transform ``(a, b, c, d, e, f)`` (rasterio order),
        ``None`` for images without georeference.
    source: the file it was read from.
    band_names: names of the bands returned, e.g. ``("R", "G", "B", "IR")``, when known.
    nodata: the value of pixels that hold no data (NaN allowed), ``None`` when the file has none.
    gcps: ground control points ``(row, col, x, y, z)`` of an image georeferenced by them
        instead of a transform (``crs`` is then theirs), else ``None``.
    """

    crs: str | None
    transform: tuple[float, ...] | None
    source: str | None = None
    band_names: tuple[str, ...] | None = None
    nodata: float | None = None
    gcps: tuple[tuple[float, float, float, float, float], ...] | None = None

    def to_dict(self) -> dict:
        nodata = "nan" if self.nodata is not None and math.isnan(self.nodata) else self.nodata
        return {
            "crs": self.crs,
            "transform": list(self.transform) if self.transform is not None else None,
            "source": self.source,
            "band_names": list(self.band_names) if self.band_names is not None else None,
            "nodata": nodata,
            "gcps": [list(g) for g in self.gcps] if self.gcps is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict) -> GeoInfo:
        transform = d.get("transform")
        names = d.get("band_names")
        gcps = d.get("gcps")
        return cls(
            d.get("crs"),
            tuple(float(v) for v in transform[:6]) if transform is not None else None,
            d.get("source"),
            tuple(names) if names is not None else None,
            float(d["nodata"]) if d.get("nodata") is not None else None,
            tuple(tuple(float(v) for v in g) for g in gcps) if gcps else None,
        )

    @property
    def pixel_size(self) -> float | None:
        """Side of a pixel in map units (square root of the pixel area), or ``None``."""
        if self.transform is None:
            return None
        a, b, _, d, e, _ = self.transform
        return float(abs(a * e - b * d) ** 0.5)


@dataclass(frozen=True)
class ImageInfo:
    """Size, band count, pixel type and georeference of an image, read without its pixels."""

    height: int
    width: int
    count: int
    dtype: np.dtype
    geo: GeoInfo


@contextmanager
def _open(path) -> Iterator[rasterio.io.DatasetReader]:
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioError as e:
        reason = "not an image or an unsupported format" if "not recognized" in str(e) else f"cannot open ({e})"
        raise ImageReadError(f"{path}: {reason}") from None
    with src:
        if np.dtype(src.dtypes[0]).kind not in "uif":
            raise ImageReadError(f"{path}: unsupported pixel type {src.dtypes[0]} (need integer or float)")
        pages = _pages(src)
        if pages > 1:
            raise ImageReadError(f"{path} holds {pages} images (a multi-page TIFF) and only one image a file is read: "
                                 f"save the page you want on its own, e.g. rio convert 'GTIFF_DIR:2:{path}' page2.tif")
        yield src


def _pages(src) -> int:
    """How many images (pages) a TIFF holds besides its overviews and masks; 1 for other formats."""
    return max(1, sum(name.startswith("GTIFF_DIR:") for name in src.subdatasets))


def page_count(path) -> int:
    """How many images a file holds: more than 1 only for a multi-page TIFF (0 if it cannot be opened)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return _pages(src)
    except RasterioError:
        return 0


#: GDAL's block cache while an image is read (MB): the decoded blocks are not kept as a second copy.
_READ_CACHE_MB = 64


def _read(src, path, indexes, window=None) -> np.ndarray:
    """The pixels, read straight into their (H, W, bands) layout: no copy of the whole image."""
    height, width = (int(window.height), int(window.width)) if window is not None else (src.height, src.width)
    out = np.empty((height, width, len(indexes)), np.result_type(*(src.dtypes[i - 1] for i in indexes)))
    try:
        with rasterio.Env(GDAL_CACHEMAX=_READ_CACHE_MB):
            src.read(indexes, window=window, out=np.moveaxis(out, -1, 0))
    except RasterioError:
        raise ImageReadError(f"{path}: truncated or corrupt image data (the pixels cannot be read)") from None
    return out[..., 0] if len(indexes) == 1 else out


def _indexes(src, bands, path) -> list[int]:
    if bands is None:
        return list(range(1, src.count + 1))
    bands = [int(b) for b in bands]
    if not bands:
        raise ImageReadError(f"{path}: no bands selected")
    bad = [b for b in bands if not 0 <= b < src.count]
    if bad:
        raise ImageReadError(f"{path}: band {bad[0]} requested but the image has {src.count} bands (0-{src.count - 1})")
    return [b + 1 for b in bands]


def _band_names(src, path: Path) -> tuple[str, ...] | None:
    if all(src.descriptions):
        return tuple(src.descriptions)
    match = _ISPRS_SUFFIX.search(path.stem)
    if match and len(_ISPRS_BANDS[match.group(1).upper()]) == src.count:
        return _ISPRS_BANDS[match.group(1).upper()]
    interp = src.colorinterp
    if src.count == 1 and interp[0] == ColorInterp.gray:
        return ("gray",)
    if src.count in (3, 4) and all(c in _INTERP_NAMES for c in interp):
        names = tuple(_INTERP_NAMES[c] for c in interp)
        if names[:3] == ("R", "G", "B"):
            return names
    return None


def _crs_beside(path: Path) -> str | None:
    prj = path.with_suffix(".prj")
    if not prj.is_file():
        return None
    try:
        return CRS.from_user_input(prj.read_text(encoding="utf-8", errors="replace").strip()).to_string()
    except CRSError:
        warnings.warn(f"{prj}: not a CRS this program understands; CRS left unknown", stacklevel=3)
        return None


def _gcps(src) -> tuple[tuple[tuple[float, ...], ...] | None, str | None]:
    points, crs = src.gcps
    if not points:
        return None, None
    return tuple((p.row, p.col, p.x, p.y, p.z or 0.0) for p in points), crs.to_string() if crs else None


def _geo_info(src, path: Path, indexes: Sequence[int]) -> GeoInfo:
    gcps, gcp_crs = _gcps(src)
    transform = None if src.transform.is_identity and (src.crs is None or gcps) else tuple(src.transform)[:6]
    crs = src.crs.to_string() if src.crs else gcp_crs or _crs_beside(path)
    if crs is None and transform is not None and _POTSDAM_NAME.search(path.name):
        crs = POTSDAM_CRS
        warnings.warn(
            f"{path.name}: no CRS in the file or beside it; ISPRS Potsdam tile name, assuming {POTSDAM_CRS} (UTM 33N)",
            stacklevel=3,
        )
    names = _band_names(src, path)
    if names is not None:
        names = tuple(names[i - 1] for i in indexes)
    nodata = src.nodatavals[indexes[0] - 1]
    return GeoInfo(crs, transform, str(path), names, None if nodata is None else float(nodata), gcps)


def _has_palette(src, indexes: Sequence[int]) -> bool:
    return len(indexes) == 1 and src.colorinterp[indexes[0] - 1] == ColorInterp.palette


def _expand_palette(src, index: int, values: np.ndarray) -> np.ndarray:
    """The (H, W, 3) RGB colours of a palette band's index values."""
    lut = np.zeros((256 if values.dtype == np.uint8 else 65536, 3), np.uint8)
    for value, color in src.colormap(index).items():
        if value < len(lut):
            lut[value] = color[:3]
    return lut[values]


def read_image(path, bands: Sequence[int] | None = None, *, expand_palette: bool = False) -> tuple[np.ndarray, GeoInfo]:
    """Read an image in its own pixel type, with its georeference.

    Parameters
    ----------
    path : path-like
        GeoTIFF, TIFF with a world file, PNG or JPEG (anything GDAL reads).
    bands : sequence of int, optional
        0-based band indices to keep, in that order: ``(0, 1, 2)`` takes RGB from an
        ISPRS RGBIR tile, ``(3, 0, 1)`` makes IRRG.
    expand_palette : bool
        A one-band image with a colour table (a palette PNG, say) as its (H, W, 3) RGB
        colours, for imagery; off by default, since label rasters are read as their values.

    Returns
    -------
    image : ndarray
        (H, W) for one band, else (H, W, C); uint8, uint16, float, ... as stored.
    geo : GeoInfo
        CRS and transform (``None`` when absent), or ground control points; nodata. Files
        named ``top_potsdam_*`` with a world file but no CRS get EPSG:32633, with a warning.

    Raises
    ------
    ImageReadError
        Missing file, not an image, truncated data, unsupported pixel type or bad band index.
    """
    path = Path(path)
    with _open(path) as src:
        indexes = _indexes(src, bands, path)
        image, geo = _read(src, path, indexes), _geo_info(src, path, indexes)
        if expand_palette and _has_palette(src, indexes):
            image = _expand_palette(src, indexes[0], image)
            geo.band_names = ("R", "G", "B")
    return image, geo


def read_input(path) -> tuple[np.ndarray, GeoInfo, np.ndarray | None]:
    """An image to segment: its pixels (a palette expanded to RGB), georeference, and the
    pixels that hold data.

    Returns ``(image, geo, valid)``; ``valid`` is an (H, W) bool array, False where every
    band holds the file's nodata value, or ``None`` when no pixel does (or the file has no
    nodata value). The engine leaves the pixels that are not valid unlabelled.
    """
    path = Path(path)
    with _open(path) as src:
        indexes = _indexes(src, None, path)
        image, geo = _read(src, path, indexes), _geo_info(src, path, indexes)
        valid = _valid_pixels(image, geo.nodata)
        if _has_palette(src, indexes):
            image = _expand_palette(src, indexes[0], image)
            geo.band_names = ("R", "G", "B")
    return image, geo, valid


def _valid_pixels(image: np.ndarray, nodata: float | None, rows: int = 1024) -> np.ndarray | None:
    """False where every band equals ``nodata`` (NaN matches NaN), band of rows by band of rows."""
    if nodata is None or (math.isnan(nodata) and image.dtype.kind != "f"):
        return None
    valid = np.ones(image.shape[:2], bool)
    for y in range(0, image.shape[0], rows):
        block = image[y : y + rows]
        missing = np.isnan(block) if math.isnan(nodata) else block == nodata
        valid[y : y + rows] = ~(missing.all(axis=-1) if block.ndim == 3 else missing)
    return None if valid.all() else valid


def read_window(path, window: tuple[int, int, int, int], bands: Sequence[int] | None = None) -> np.ndarray:
    """Read the block ``(row0, col0, height, width)`` of an image, laid out as :func:`read_image`.

    For tiles too large to hold whole. The window must lie inside the image.
    """
    path = Path(path)
    row0, col0, height, width = (int(v) for v in window)
    with _open(path) as src:
        if height <= 0 or width <= 0 or row0 < 0 or col0 < 0 or row0 + height > src.height or col0 + width > src.width:
            raise BadInputError(
                f"{path}: window (row {row0}, col {col0}, {height}x{width}) is not inside the "
                f"{src.height}x{src.width} image"
            )
        return _read(src, path, _indexes(src, bands, path), Window(col0, row0, width, height))


def image_info(path) -> ImageInfo:
    """Size, band count, pixel type and georeference of an image without reading its pixels."""
    path = Path(path)
    with _open(path) as src:
        indexes = list(range(1, src.count + 1))
        return ImageInfo(src.height, src.width, src.count, np.dtype(src.dtypes[0]), _geo_info(src, path, indexes))


def read_label_info(path) -> dict:
    """What a label raster says of its values: its sidecar ``*.classes.json``, else its tags.

    Returns the stored metadata (``classes``, ``label_values`` for files of the current
    convention, model, parameters...) or ``{}`` for a raster that carries none. Classes are
    given as ``{"name": ...}`` dicts at least.
    """
    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
            if isinstance(meta, dict) and isinstance(meta.get("classes"), list):
                return meta
        except (OSError, ValueError):
            pass
    with _open(path) as src:
        tags = src.tags()
    for key in ("MASKDIFFUSION_METADATA",):
        try:
            meta = json.loads(tags.get(key) or "{}")
        except ValueError:
            meta = {}
        if isinstance(meta, dict) and isinstance(meta.get("classes"), list):
            return meta
    try:
        names = json.loads(tags.get("CLASSES") or "null")
        values = json.loads(tags.get("LABEL_VALUES") or "null")
    except ValueError:
        return {}
    if not isinstance(names, list):
        return {}
    meta = {"classes": [{"name": str(n)} for n in names]}
    if isinstance(values, dict):
        meta["label_values"] = values
    return meta


def read_class_names(path) -> list[str] | None:
    """The class names of a label raster, in value order 1, 2, ... (``None`` if it has none).

    A file written before labels were 1-based lists them in value order 0, 1, ...; a napari
    export of that time listed "unlabelled" first, which is dropped here.
    """
    meta = read_label_info(path)
    names = [str(c.get("name")) for c in meta.get("classes", []) if isinstance(c, dict)]
    if names and names[0] == UNLABELLED_NAME and not isinstance(meta.get("label_values"), Mapping):
        names = names[1:]  # such an export is current (is_current) but names value 0 too
    return names or None


def _driver(path: Path, drivers: dict[str, str]) -> str:
    try:
        return drivers[path.suffix.lower()]
    except KeyError:
        raise BadInputError(f"cannot write {path}: unsupported suffix; use one of {', '.join(drivers)}") from None


def _geo_profile(geo: GeoInfo | None) -> dict:
    if geo is None:
        return {}
    profile = {}
    if geo.crs:
        profile["crs"] = CRS.from_user_input(geo.crs)
    if geo.transform is not None:
        profile["transform"] = Affine(*geo.transform[:6])
    elif geo.gcps:
        profile["gcps"] = [GroundControlPoint(*g) for g in geo.gcps]
    return profile


def _tiff_profile(dtype) -> dict:
    predictor = {"f": 3, "i": 2, "u": 2}[np.dtype(dtype).kind] if np.dtype(dtype).itemsize > 1 else 1
    return {"tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate",
            "predictor": predictor, "BIGTIFF": "IF_SAFER"}


#: Rows compared at a time when a written raster is read back.
_CHECK_ROWS = 1024


def _write_dataset(path: Path, driver: str, data: np.ndarray, geo: GeoInfo | None, options: dict,
                   decorate=None) -> Path:
    """Write (B, H, W) ``data`` as a ``driver`` file at ``path``, atomically and checked.

    GDAL writes the file in memory; Python's file I/O writes it to disk, so a full disk or a
    file-size limit raises with its reason (GDAL writing to disk would only print a libtiff
    message and leave a broken file). The file is then read back and compared with ``data``.
    ``decorate(dst)`` adds colour tables, tags and band descriptions.
    """
    count, height, width = data.shape
    profile = {"driver": driver, "width": width, "height": height, "count": count, "dtype": data.dtype.name}
    profile.update(_geo_profile(geo) if driver == "GTiff" else {})
    profile.update(options)
    check = partial(_reads_back, data=data, target=path)
    with atomic_output(path, check=check) as tmp, rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile() as memory:
            with memory.open(**profile) as dst:
                dst.write(data)
                if decorate is not None:
                    decorate(dst)
            with open(tmp, "wb") as f:
                f.write(memory.getbuffer())
    return path


def _reads_back(tmp: Path, data: np.ndarray, target: Path) -> None:
    """Raise :class:`OutputError` unless ``tmp`` holds ``data`` (compared band of rows by band)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(tmp)
        with src:
            same = (src.count, src.height, src.width) == data.shape
            for y in range(0, data.shape[1], _CHECK_ROWS) if same else ():
                window = Window(0, y, data.shape[2], min(_CHECK_ROWS, data.shape[1] - y))
                if not np.array_equal(src.read(window=window), data[:, y : y + window.height],
                                      equal_nan=data.dtype.kind == "f"):
                    same = False
                    break
    except RasterioError:
        same = False
    if not same:
        raise OutputError(f"cannot write {target}: the written file does not read back as written; "
                          "nothing was written or replaced")


def _check_labels(labels, n_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise BadInputError(f"labels must be a 2-D (H, W) label map, got shape {labels.shape}")
    if labels.dtype.kind not in "ui" and labels.dtype != bool:
        raise BadInputError(f"labels must be integers (0 = unlabelled, k = k-th class), got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > n_classes):
        raise BadInputError(f"label values must be 0 (unlabelled) to {n_classes} (the classes), "
                            f"found {labels.min()}-{labels.max()}")
    return labels


def _class_tags(classes: Sequence[ClassSpec], metadata: dict | None) -> dict[str, str]:
    values = label_values(classes)
    tags = {f"CLASS_{k}": name for k, name in values.items()}
    tags["CLASSES"] = json.dumps([c.name for c in classes])
    tags["LABEL_VALUES"] = json.dumps(values)
    if metadata:
        tags["MASKDIFFUSION_METADATA"] = json.dumps(to_jsonable({**metadata, "label_values": values}), allow_nan=False)
    return tags


def write_labels(path, labels: np.ndarray, classes: Sequence[ClassSpec], geo: GeoInfo | None = None,
                 metadata: dict | None = None) -> Path:
    """Write a label map as a GeoTIFF or palette PNG that GIS and image viewers colour.

    ``labels`` follows :mod:`maskdiffusion.core.labels`: 0 = unlabelled, k = ``classes[k - 1]``.
    ``.tif``/``.tiff``: tiled (256), deflate, uint8 (uint16 above 255 classes), nodata 0, a
    colour table (0 transparent, k the class colour), the class names and ``LABEL_VALUES`` as
    tags and in the band description, CRS and transform from ``geo``. ``.png``: palette PNG
    (at most 255 classes, 0 transparent black), names as text chunks, no georeference (keep it
    in the sidecar). ``metadata`` is stored as JSON in the tag ``MASKDIFFUSION_METADATA``.
    Atomic; refused where a label raster of other classes and another suffix has the same
    sidecar name (:func:`check_sidecar_free`).
    """
    path = Path(path)
    driver = _driver(path, _LABEL_DRIVERS)
    classes = as_class_specs(classes)
    labels = _check_labels(labels, len(classes))
    dtype = label_dtype(len(classes))
    if driver == "PNG" and dtype != np.uint8:
        raise BadInputError(f"cannot write {path}: a palette PNG holds at most 255 classes, got {len(classes)}; "
                            "use .tif")
    check_sidecar_free(path, [c.name for c in classes])
    options = {**_tiff_profile(dtype), "nodata": UNLABELLED} if driver == "GTiff" else {"WRITE_METADATA_AS_TEXT": "YES"}

    def decorate(dst) -> None:
        if dtype == np.uint8:
            colors = {UNLABELLED: (0, 0, 0, 0), **{k: (*c.color, 255) for k, c in enumerate(classes, start=1)}}
            dst.write_colormap(1, colors)
        dst.update_tags(**_class_tags(classes, metadata))
        if driver == "GTiff":
            dst.set_band_description(1, "label: " + ", ".join(f"{k}={n}" for k, n in label_values(classes).items()))

    return _write_dataset(path, driver, labels.astype(dtype, copy=False)[None], geo, options, decorate)


def write_isprs_rgb(path, labels: np.ndarray, classes: Sequence[ClassSpec], geo: GeoInfo | None = None) -> Path:
    """Write a label map colour-coded as RGB (each pixel the colour of its class), as ISPRS
    labels are: unlabelled (0) becomes black. ``.tif``/``.tiff`` (tiled, deflate,
    georeferenced) or ``.png``.
    """
    from .isprs import encode_isprs_labels

    path = Path(path)
    driver = _driver(path, _LABEL_DRIVERS)
    classes = as_class_specs(classes)
    labels = _check_labels(labels, len(classes))
    check_sidecar_free(path, [c.name for c in classes])
    rgb = encode_isprs_labels(to_index(labels), classes)
    options = {**_tiff_profile(np.uint8), "photometric": "RGB"} if driver == "GTiff" else {}
    return _write_dataset(path, driver, np.moveaxis(rgb, -1, 0), geo, options)


def write_raster(path, array: np.ndarray, geo: GeoInfo | None = None, nodata: float | None = None) -> Path:
    """Write any (H, W) or (B, H, W) numeric array as a tiled, compressed GeoTIFF (e.g. confidence)."""
    path = Path(path)
    driver = _driver(path, _GTIFF)
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype.kind not in "uif":
        raise BadInputError(f"cannot write {path}: unsupported array type {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise BadInputError(f"cannot write {path}: need an (H, W) or (B, H, W) array, got shape {array.shape}")
    return _write_dataset(path, driver, array, geo, {"nodata": nodata, **_tiff_profile(array.dtype)})


def sidecar_path(out_path) -> Path:
    """The class sidecar of an output: ``seg.tif`` -> ``seg.classes.json``."""
    return Path(out_path).with_suffix(".classes.json")


def check_sidecar_free(out_path, names: Sequence[str] | None = None) -> None:
    """Refuse (:class:`BadInputError`) to write the label raster ``out_path`` (of the classes
    ``names``) or its sidecar where a label raster of the same name with another suffix holds
    other classes: ``x.tif`` and ``x.png`` share ``x.classes.json``, so writing one would have
    the other read with these classes. ``names`` unknown: any such raster is refused."""
    path = Path(out_path)
    for suffix in _LABEL_DRIVERS:
        other = path.with_suffix(suffix)
        if other.name == path.name or not other.is_file() or (path.exists() and other.samefile(path)):
            continue
        held = _tagged_class_names(other)
        if held is not None and (names is None or list(names) != held):
            raise BadInputError(f"{other} is a label raster of other classes with the same sidecar name "
                                f"({sidecar_path(path).name}) as {path.name}: writing {path.name} would give it "
                                f"these classes; choose another name for {path.name}")


def _tagged_class_names(path: Path) -> list[str] | None:
    """The class names one of our label rasters carries in its tags (``None`` for other files)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                names = json.loads(src.tags().get("CLASSES") or "null")
    except (RasterioError, ValueError):
        return None
    return [str(n) for n in names] if isinstance(names, list) else None


def write_sidecar(out_path, metadata: dict) -> Path:
    """Write ``metadata`` (classes, model, parameters, georeference) as JSON beside an output
    (refused where a label raster of other classes has the same sidecar name, :func:`check_sidecar_free`)."""
    classes = metadata.get("classes")
    names = [c.get("name") for c in classes if isinstance(c, dict)] if isinstance(classes, list) else None
    check_sidecar_free(out_path, names)
    return write_json(sidecar_path(out_path), metadata)


def image_reference(image_path, out_path) -> str:
    """How a sidecar names its image: the path relative to the sidecar's folder (so that a folder
    of results and images can move), absolute where no relative path exists (another drive)."""
    image, folder = Path(image_path).absolute(), Path(out_path).absolute().parent
    try:
        return Path(os.path.relpath(image, folder)).as_posix()
    except ValueError:
        return str(image)


def referenced_image(sidecar, metadata: dict) -> Path | None:
    """The image a sidecar names (:func:`image_reference`; older sidecars named it as given on the
    command line), if the file is there."""
    name = metadata.get("image")
    if not isinstance(name, str) or not name:
        return None
    for candidate in (Path(sidecar).parent / name, Path(name)):
        if candidate.is_file():
            return candidate
    return None

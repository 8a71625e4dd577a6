"""npe2 reader: only this plugin's own files, so napari opens every other TIFF itself, unasked.

- ``OUT.classes.json`` (the sidecar of ``maskdiffusion segment``/``batch``/our writers): the
  result's class layers, georeferenced, and its image when the file is still there;
- ``classes.json`` of a class bundle folder: its class layers;
- ``NAME.mdsession`` (or its ``session.json``): the session's image and class layers (the
  annotator's strokes as strokes), which the dock takes in to continue refining;
- ISPRS Potsdam files (``top_potsdam_*.tif`` with their ``.tfw``, ``potsdam_*_label*.tif``):
  images keep their georeference (EPSG:32633), a multi-band tile opens as its band stack and an
  RGB view, labels as a semantic map of the six Potsdam classes. A multi-page TIFF of such a
  name is left to napari, which reads every page.

The layers of one file carry one annotation id (``metadata["annotation"]``) and where they came
from (``metadata["source_file"]``), so the dock binds them as one annotation that can be saved
back in place (:mod:`.annotation`). A sidecar names its image relative to itself.
"""

from __future__ import annotations

import json
import re
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, default_color, preset_classes
from ..core.labels import from_stored
from ..errors import BadInputError
from .images import image_layer_data
from .layers import ANNOTATION, SOFTWARE, STROKE, base_metadata, class_layer_data, semantic_layer_data

__all__ = ["get_reader", "image_layer_data", "labels_sidecar", "read_path"]

_SIDECAR = ".classes.json"
_BUNDLE_FILE = "classes.json"
_SESSION_FILE = "session.json"
_POTSDAM_IMAGE = re.compile(r"^top_potsdam_\d+_\d+_(RGBIR|IRRG|RGB)\.tiff?$", re.IGNORECASE)
_POTSDAM_LABEL = re.compile(r"potsdam_\d+_\d+_label(_noboundary)?\.tiff?$", re.IGNORECASE)
_RASTER_SUFFIXES = (".tif", ".tiff", ".png")


def _kind(path) -> str | None:
    """Which of our files ``path`` is: "sidecar", "bundle", "session", "potsdam", or None."""
    from ..session_bundle import SUFFIX, is_session

    p = Path(path)
    if (p.suffix == SUFFIX or p.name == _SESSION_FILE) and is_session(p):
        return "session"
    if p.name == _BUNDLE_FILE and _is_bundle(p.parent):
        return "bundle"
    if p.name.endswith(_SIDECAR) and p.is_file() and _raster_of(p) is not None:
        return "sidecar"
    if p.is_file() and (_POTSDAM_IMAGE.search(p.name) or _POTSDAM_LABEL.search(p.name)):
        from ..geo.raster_io import page_count

        return "potsdam" if page_count(p) == 1 else None  # a multi-page TIFF is napari's to read whole
    return None


def get_reader(path):
    """:func:`read_path` for our own files (see the module), else ``None``."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    return read_path if paths and all(_kind(p) for p in paths) else None


def read_path(path) -> list[tuple]:
    """Layer-data tuples for one path or a list of paths."""
    if isinstance(path, (list, tuple)):
        return [t for p in path for t in read_path(p)]
    kind = _kind(path)
    p = Path(path)
    if kind == "potsdam":
        return read_potsdam(p)
    layers = read_session(p) if kind == "session" else read_bundle(p.parent) if kind == "bundle" else read_result(p)
    annotation = uuid.uuid4().hex[:12]
    for _, kwargs, _ in layers:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), ANNOTATION: annotation}
    return layers


def labels_sidecar(path) -> Path | None:
    """The sidecar of a label raster written by this plugin (``X.tif`` beside ``X.classes.json``),
    else ``None``: what the dock opens when napari opened the raster as a plain image."""
    from ..geo.raster_io import sidecar_path

    p = Path(path)
    if p.suffix.lower() not in _RASTER_SUFFIXES:
        return None
    sidecar = sidecar_path(p)
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return sidecar if isinstance(meta, dict) and meta.get("software") == SOFTWARE and "classes" in meta else None


def _is_bundle(folder: Path) -> bool:
    try:
        data = json.loads((folder / _BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("software") == SOFTWARE and "bundle" in data


def _raster_of(sidecar: Path) -> Path | None:
    stem = sidecar.name[: -len(_SIDECAR)]
    return next((sidecar.with_name(stem + s) for s in _RASTER_SUFFIXES if sidecar.with_name(stem + s).is_file()),
                None)


def _class_layers(labels: np.ndarray, classes, meta: dict, image_name: str, edited: np.ndarray | None = None,
                  image_path: str | None = None) -> list[tuple]:
    """One class layer per class of a label map (``edited`` pixels as strokes)."""
    base = base_metadata(None, meta)
    base["image"] = image_name
    if image_path:
        base["image_path"] = image_path
    out = []
    for k, spec in enumerate(classes, start=1):
        mine = labels == k
        data = mine.astype(np.uint8) if edited is None else np.where(mine & edited, STROKE, mine).astype(np.uint8)
        out.append(class_layer_data(data, spec, k, base))
    return out


def _image_layers(meta: dict, sidecar: Path, fallback: str) -> tuple[list[tuple], str, str | None]:
    """The image a sidecar names, when it is still on disk: its layers, the name the class layers
    refer to, and its path."""
    from ..geo.raster_io import read_image, referenced_image

    source = referenced_image(sidecar, meta)
    if source is None:
        return [], meta.get("image_layer") or fallback, None
    image, image_geo = read_image(source)
    out = image_layer_data(image, image_geo, source.stem)
    return out, out[-1][1]["name"] if len(out) > 1 else source.stem, str(source)


def _read_sidecar(sidecar: Path) -> tuple[dict, list[ClassSpec]]:
    """A result sidecar's metadata and classes; one line naming the file when it cannot be used."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except OSError as e:
        raise BadInputError(f"{sidecar}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{sidecar}: not UTF-8 text, so not a result's sidecar") from None
    except json.JSONDecodeError as e:
        raise BadInputError(f"{sidecar}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                            "the result's classes cannot be read") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("classes"), list):
        raise BadInputError(f"{sidecar}: not a result's sidecar (it holds no list of \"classes\")")
    try:
        return meta, [ClassSpec.from_dict(c) for c in meta["classes"]]
    except BadInputError as e:
        raise BadInputError(f"{sidecar}: {e}") from None


def _with_unknown_classes(labels: np.ndarray, classes: list[ClassSpec], raster: Path,
                          sidecar: Path) -> tuple[np.ndarray, list[ClassSpec]]:
    """Stored values above the sidecar's classes become classes "unknown class N" (numbered on
    after the known ones), said in one warning: nothing the file holds is hidden."""
    n = len(classes)
    if not labels.size or int(labels.max()) <= n:
        return labels, classes
    unknown = [int(v) for v in np.unique(labels[labels > n])]
    warnings.warn(f"{raster.name} holds label value(s) {', '.join(map(str, unknown))} that {sidecar.name} does not "
                  f"list (it has {n} classes): shown as layer(s) 'unknown class N'", stacklevel=3)
    lookup = np.arange(int(labels.max()) + 1)
    lookup[unknown] = np.arange(n + 1, n + 1 + len(unknown))
    dtype = np.uint8 if n + len(unknown) < 256 else np.uint16
    return (lookup[labels].astype(dtype),
            classes + [ClassSpec(f"unknown class {v}", (), default_color(n + i)) for i, v in enumerate(unknown)])


def read_result(sidecar: Path) -> list[tuple]:
    """A result (its sidecar): its image when still on disk, then one class layer per class, and
    one per stored value the sidecar does not list ("unknown class N", with a warning). An
    ISPRS-style colour-coded raster is decoded by the colours of its classes."""
    from ..geo.raster_io import read_image

    meta, classes = _read_sidecar(sidecar)
    raster = _raster_of(sidecar)
    labels, geo = read_image(raster)
    if labels.ndim == 3 and labels.shape[2] >= 3 and labels.dtype == np.uint8 and all(c.color for c in classes):
        from ..geo.isprs import decode_isprs_labels

        labels = (decode_isprs_labels(labels[..., :3], classes)[0] + 1).astype(np.uint8)
    elif labels.ndim != 2:
        raise BadInputError(f"{raster} is not a one-band label raster")
    else:
        labels = from_stored(labels, meta, len(classes), what=str(raster))
        labels, classes = _with_unknown_classes(labels, classes, raster, sidecar)
    if geo.transform is not None and not meta.get("georeference"):
        meta["georeference"] = geo.to_dict()
    out, image_name, image_path = _image_layers(meta, sidecar, raster.stem)
    meta["source_file"] = {"kind": "labels", "path": str(raster)}
    return out + _class_layers(labels, classes, meta, image_name, image_path=image_path)


def read_session(path) -> list[tuple]:
    """A ``.mdsession`` bundle (or its ``session.json``): its image when the file is still there,
    then its class layers, the annotator's strokes as strokes."""
    from ..geo.raster_io import read_image
    from ..session_bundle import SUFFIX, load_session

    p = Path(path)
    folder = (p.parent if p.name == _SESSION_FILE else p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX))
    folder = folder.resolve()
    session = load_session(folder)
    name = session.image.get("layer") or folder.stem
    out = []
    source = session.image.get("path")
    if source and Path(source).is_file():
        image, geo = read_image(source)
        out = image_layer_data(image, geo, name)
    meta = {"model": session.model, "parameters": session.parameters, "session": str(folder),
            "source_file": {"kind": "session", "path": str(folder)}}
    if session.image.get("georeference"):
        meta["georeference"] = session.image["georeference"]
    return out + _class_layers(session.labels, session.classes, meta, name, np.asarray(session.edited),
                               source if out else None)


def read_potsdam(path: Path) -> list[tuple]:
    """An ISPRS Potsdam image (georeferenced) or its colour-coded labels (a semantic map)."""
    from ..geo.isprs import decode_isprs_labels
    from ..geo.raster_io import read_image

    image, geo = read_image(path)
    if _POTSDAM_LABEL.search(path.name):
        if image.ndim != 3 or image.shape[2] < 3:
            raise BadInputError(f"{path.name} is named like ISPRS labels but is not an RGB image")
        index, _ = decode_isprs_labels(image[..., :3])
        meta = {"source": str(path)}
        if geo.transform is not None:
            meta["georeference"] = geo.to_dict()
        return [semantic_layer_data((index + 1).astype(np.uint8), preset_classes("potsdam6"), meta, name=path.stem)]
    return image_layer_data(image, geo, path.stem)


def read_bundle(folder: Path) -> list[tuple]:
    """The class layers of a bundle written by :func:`maskdiffusion.napari.writers.write_bundle`."""
    from ..geo.raster_io import read_image

    info = json.loads((folder / _BUNDLE_FILE).read_text(encoding="utf-8"))
    base = {k: v for k, v in info.items() if k not in ("classes", "bundle", "semantic", "merge_rule", "label_values")}
    out, image_name, image_path = _image_layers(info, folder / _BUNDLE_FILE, folder.stem)
    base = {**base_metadata(None, base), "image": image_name, "source_file": {"kind": "bundle", "path": str(folder)}}
    if image_path:
        base["image_path"] = image_path
    for k, entry in enumerate(info["classes"], start=1):
        labels, _ = read_image(folder / entry["file"])
        out.append(class_layer_data((labels != 0).astype(np.uint8), ClassSpec.from_dict(entry), k, base))
    return out

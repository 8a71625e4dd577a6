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
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, preset_classes
from ..core.labels import class_view
from ..errors import BadInputError
from .images import image_layer_data
from .layers import ANNOTATION, base_metadata, class_layer_data, semantic_layer_data

__all__ = ["get_reader", "image_layer_data", "read_path"]

_POTSDAM_IMAGE = re.compile(r"^top_potsdam_\d+_\d+_(RGBIR|IRRG|RGB)\.tiff?$", re.IGNORECASE)
_POTSDAM_LABEL = re.compile(r"potsdam_\d+_\d+_label(_noboundary)?\.tiff?$", re.IGNORECASE)


def _kind(path) -> str | None:
    """Which of our files ``path`` is: "sidecar", "bundle", "session", "potsdam", or None."""
    from ..geo.label_files import BUNDLE_FILE, SIDECAR, is_bundle, raster_of
    from ..session_bundle import INDEX, SUFFIX, is_session

    p = Path(path)
    if (p.suffix == SUFFIX or p.name == INDEX) and is_session(p):
        return "session"
    if p.name == BUNDLE_FILE and is_bundle(p.parent):
        return "bundle"
    if p.name.endswith(SIDECAR) and p.is_file() and raster_of(p) is not None:
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


def _base(meta: dict, image_name: str, image_path: str | None) -> dict:
    """The class layers' shared metadata, naming their image (and its file, when known)."""
    base = {**base_metadata(None, meta), "image": image_name}
    if image_path:
        base["image_path"] = image_path
    return base


def _class_layers(labels: np.ndarray, classes, meta: dict, image_name: str, edited: np.ndarray | None = None,
                  image_path: str | None = None) -> list[tuple]:
    """One class layer per class of a label map (``edited`` pixels as strokes)."""
    base = _base(meta, image_name, image_path)
    return [class_layer_data(class_view(labels, edited, k), spec, k, base) for k, spec in enumerate(classes, start=1)]


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


def read_result(sidecar: Path) -> list[tuple]:
    """A result (its sidecar): its image when still on disk, then one class layer per class
    (:func:`~maskdiffusion.geo.label_files.read_label_map`)."""
    from ..geo.label_files import raster_of, read_label_map

    labels, classes, meta, geo = read_label_map(sidecar)
    raster = raster_of(sidecar)
    if geo.transform is not None and not meta.get("georeference"):
        meta["georeference"] = geo.to_dict()
    out, image_name, image_path = _image_layers(meta, sidecar, raster.stem)
    meta["source_file"] = {"kind": "labels", "path": str(raster)}
    return out + _class_layers(labels, classes, meta, image_name, image_path=image_path)


def read_session(path) -> list[tuple]:
    """A ``.mdsession`` bundle (or its ``session.json``): its image when the file is still there,
    then its class layers, the annotator's strokes as strokes."""
    from ..geo.raster_io import read_image
    from ..session_bundle import bundle_path, load_session

    folder = bundle_path(path).resolve()
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
    from ..geo.label_files import BUNDLE_FILE
    from ..geo.raster_io import read_image

    info = json.loads((folder / BUNDLE_FILE).read_text(encoding="utf-8"))
    out, image_name, image_path = _image_layers(info, folder / BUNDLE_FILE, folder.stem)
    meta = {k: v for k, v in info.items() if k not in ("classes", "bundle", "semantic", "merge_rule", "label_values")}
    base = {**_base(meta, image_name, image_path), "source_file": {"kind": "bundle", "path": str(folder)}}
    for k, entry in enumerate(info["classes"], start=1):
        labels, _ = read_image(folder / entry["file"])
        out.append(class_layer_data((labels != 0).astype(np.uint8), ClassSpec.from_dict(entry), k, base))
    return out

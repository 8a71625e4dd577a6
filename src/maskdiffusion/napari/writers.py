"""npe2 writers: one or several Labels layers as a label GeoTIFF, ISPRS colour-coded RGB or a
palette PNG (each with its ``.classes.json`` sidecar), and class layers as a bundle folder.

Several layers are merged into one label map first (:data:`~.layers.MERGE_RULE`: the layer
higher in the list wins), so selecting a run's class layers and saving them gives the run's
label map with its classes and georeference. Values follow :mod:`maskdiffusion.core.labels`.

Every file is written atomically and replaces only a file of its own kind
(:mod:`maskdiffusion.geo.label_files`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec
from ..core.labels import CLASS, SEMANTIC, merge_masks
from .layers import ANNOTATION, CLASS_ID, MERGE_RULE, safe_filename

__all__ = ["write_annotation", "write_bundle", "write_geotiff", "write_isprs_rgb", "write_palette_png"]

#: Layer metadata that describes one layer in the viewer, not the file written.
_NOT_EXPORTED = ("class", "value", "prompts", "color", "index", ANNOTATION, CLASS_ID, "source_file", "session",
                 "role")


def write_geotiff(path: str, layer_data: list[tuple]) -> list[str]:
    """Labels layers as one label GeoTIFF with colour table, class names and georeference."""
    return _write_map(Path(path), layer_data, "geotiff")


def write_palette_png(path: str, layer_data: list[tuple]) -> list[str]:
    """Labels layers as one palette PNG (0 transparent), with a ``.classes.json`` sidecar."""
    return _write_map(Path(path), layer_data, "png")


def write_isprs_rgb(path: str, layer_data: list[tuple]) -> list[str]:
    """Labels layers colour-coded as RGB (ISPRS style; unlabelled is black), with a sidecar."""
    return _write_map(Path(path), layer_data, "isprs")


def _geo(metadata: dict):
    from ..geo.raster_io import GeoInfo

    geo = metadata.get("georeference")
    return GeoInfo.from_dict(geo) if geo else None


def _export_metadata(metadata: dict, out_path: Path) -> dict:
    """The layers' metadata as the sidecar of ``out_path`` (the classes are added by the writer):
    the image named by a path relative to the sidecar, and the layer's name as ``image_layer``
    for when the file is gone."""
    from ..geo.atomic import to_jsonable
    from ..geo.raster_io import image_reference

    jsonable = json.loads(json.dumps(to_jsonable(metadata), default=str))
    meta = {k: v for k, v in jsonable.items() if k not in _NOT_EXPORTED}
    name, path = meta.pop("image", None), meta.pop("image_path", None)
    if name:
        meta["image_layer"] = name
    if path:
        meta["image"] = image_reference(path, out_path)
    return meta


def write_annotation(path, labels: np.ndarray, classes: list[ClassSpec], metadata: dict) -> list[str]:
    """An annotation's label map as a label GeoTIFF (``.tif``) or palette PNG, with its sidecar
    (what the dock's *Save labels…* writes)."""
    from .layers import semantic_layer_data

    path = Path(path)
    kind = "png" if path.suffix.lower() == ".png" else "geotiff"
    return _write_map(path, [semantic_layer_data(labels, classes, metadata)], kind)


def _write_map(path: Path, layer_data: list[tuple], kind: str) -> list[str]:
    from ..geo.label_files import write_label_map

    labels, classes, metadata = _label_map(layer_data)
    return write_label_map(path, labels, classes, _geo(metadata), _export_metadata(metadata, path), kind)


def _labelled(layer_data: list[tuple]) -> list[tuple[np.ndarray, dict, str | None]]:
    """(data, metadata, name) of the Labels layers among ``layer_data``."""
    return [(np.asarray(data), dict(kwargs.get("metadata") or {}), kwargs.get("name"))
            for data, kwargs, layer_type in layer_data if layer_type == "labels"]


def _label_map(layer_data: list[tuple]) -> tuple[np.ndarray, list[ClassSpec], dict]:
    """One label map of the layers: a single layer as it is, several merged by the merge rule."""
    from ..geo.label_files import class_masks, export_labels

    items = _labelled(layer_data)
    if len(items) == 1:
        return (*export_labels(*items[0][:2]), items[0][1])
    entries = class_masks(items)
    metadata = {**entries[0][2], "merge_rule": MERGE_RULE}
    return merge_masks([mask for _, mask, _ in entries]), [spec for spec, _, _ in entries], metadata


def write_bundle(path: str, layer_data: list[tuple]) -> list[str]:
    """Class layers as one folder: a 0/1 GeoTIFF per class, ``semantic.tif`` and ``classes.json``.

    ``semantic.tif`` merges the classes by :data:`maskdiffusion.napari.layers.MERGE_RULE`
    (the layers' order). The folder appears complete or not at all.
    """
    from ..geo.label_files import class_masks, write_class_bundle

    entries = class_masks(_labelled(layer_data))
    common = {k: v for k, v in entries[0][2].items()
              if k not in ("kind", "prompt", "classes", "merge_rule", *_NOT_EXPORTED)}
    classes = [spec for spec, _, _ in entries]

    def metadata(kind: str, where: Path) -> dict:
        extra = {"class": {"kind": CLASS}, "semantic": {"kind": SEMANTIC, "merge_rule": MERGE_RULE}}
        return _export_metadata({**common, **extra.get(kind, {"merge_rule": MERGE_RULE})}, where)

    names = [f"{k:02d}_{safe_filename(spec.name)}.tif" for k, spec in enumerate(classes, start=1)]
    return write_class_bundle(path, [mask for _, mask, _ in entries], classes, _geo(entries[0][2]), metadata, names)

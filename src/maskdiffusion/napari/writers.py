"""npe2 writers: one or several Labels layers as a label GeoTIFF, ISPRS colour-coded RGB or a
palette PNG (each with its ``.classes.json`` sidecar), and class layers as a bundle folder.

Several layers are merged into one label map first (:data:`~.layers.MERGE_RULE`: the layer
higher in the list wins), so selecting a run's class layers and saving them gives the run's
label map with its classes and georeference. Values follow :mod:`maskdiffusion.core.labels`.

Every file is written atomically (nothing is left behind on failure), and an existing path is
only replaced by a file of the same kind: a label map never silently overwrites an image,
a file never replaces a folder and a bundle never replaces a folder it did not write.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, default_color
from ..core.labels import label_dtype, label_values
from ..errors import BadInputError
from .layers import ANNOTATION, CLASS, CLASS_ID, MERGE_RULE, SEMANTIC, SOFTWARE, export_labels, safe_filename

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


def _jsonable(metadata: dict) -> dict:
    from ..geo.atomic import to_jsonable

    return json.loads(json.dumps(to_jsonable(metadata), default=str))


def _export_metadata(metadata: dict, classes: list[ClassSpec], out_path: Path) -> dict:
    """The sidecar of ``out_path``: the classes, their label values, and the image named by a path
    relative to the sidecar (the layer's name as ``image_layer``, for when the file is gone)."""
    from ..geo.raster_io import image_reference

    meta = {k: v for k, v in _jsonable(metadata).items() if k not in _NOT_EXPORTED}
    meta["classes"] = [dict(c.to_dict(), value=k) for k, c in enumerate(classes, start=1)]
    meta["label_values"] = label_values(classes)
    meta.setdefault("software", SOFTWARE)
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


def _existing_kind(path: Path) -> str | None:
    """What is at ``path`` now: None, "folder", "labels" (ours), "rgb labels" (ours), or "other"."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        return "folder"
    import rasterio
    from rasterio.errors import RasterioError

    from ..geo.raster_io import sidecar_path

    try:
        with rasterio.open(path) as src:
            if "CLASSES" in src.tags() and src.count == 1:
                return "labels"
            ours = _read_json(sidecar_path(path)).get("software") == SOFTWARE
            if ours and src.count == 3:
                return "rgb labels"
            if ours and src.count == 1:
                return "labels"
    except (RasterioError, OSError):
        pass
    return "other"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _refuse_other(path: Path, want: str, allowed: set[str]) -> None:
    found = _existing_kind(path)
    if found is not None and found not in allowed:
        what = {"folder": "a folder", "labels": "a label map", "rgb labels": "an RGB label image"}
        raise BadInputError(
            f"{path} exists and is {what.get(found, 'a file of another kind')}, not {want}: "
            "not overwriting it; delete it or choose another name"
        )


def _write_map(path: Path, layer_data: list[tuple], kind: str) -> list[str]:
    from ..geo import raster_io

    labels, classes, metadata = _label_map(layer_data)
    if labels.ndim != 2:
        raise BadInputError(
            f"{path.name}: only 2-D (H, W) Labels layers can be written as one map, got shape {labels.shape}"
        )
    export_meta = _export_metadata(metadata, classes, path)
    geo = _geo(metadata)
    if kind == "isprs":
        _refuse_other(path, "an RGB label image", {"rgb labels"})
        written = raster_io.write_isprs_rgb(path, labels, classes, geo)
    else:
        _refuse_other(path, "a label map", {"labels"})
        written = raster_io.write_labels(path, labels, classes, geo if kind == "geotiff" else None, export_meta)
    try:
        sidecar = raster_io.write_sidecar(path, export_meta)
    except BaseException:
        Path(written).unlink(missing_ok=True)
        raise
    return [str(path), str(sidecar)]


def _label_map(layer_data: list[tuple]) -> tuple[np.ndarray, list[ClassSpec], dict]:
    """One label map of the layers: a single layer as it is, several merged by the merge rule."""
    layer_data = [item for item in layer_data if item[2] == "labels"]
    if len(layer_data) == 1:
        data, meta, _ = layer_data[0]
        metadata = dict(meta.get("metadata") or {})
        labels, classes = export_labels(np.asarray(data), metadata)
        return labels, classes, metadata
    entries = _class_masks(layer_data)
    labels = np.zeros(entries[0][1].shape, label_dtype(len(entries)))
    for k, (_, mask, _) in enumerate(entries, start=1):
        labels[mask] = k
    metadata = {**entries[0][2], "merge_rule": MERGE_RULE}
    return labels, [spec for spec, _, _ in entries], metadata


def _class_masks(layer_data: list[tuple]) -> list[tuple[ClassSpec, np.ndarray, dict]]:
    """(class, binary mask, metadata) for each class in the layers; semantic maps give all theirs."""
    out = []
    for data, meta, layer_type in layer_data:
        if layer_type != "labels":
            continue
        metadata = dict(meta.get("metadata") or {})
        data = np.asarray(data)
        if metadata.get("kind") in (CLASS, SEMANTIC):
            labels, classes = export_labels(data, metadata)
            for value, spec in enumerate(classes, start=1):
                out.append((spec, labels == value, metadata))
        else:
            color = metadata.get("color") or default_color(len(out))
            out.append((ClassSpec(meta.get("name") or f"class {len(out) + 1}", (), tuple(color)), data != 0, metadata))
    if not out:
        raise BadInputError("no Labels layers to write")
    names = [spec.name.lower() for spec, _, _ in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInputError(f"two layers hold the class {dupes[0]!r}; rename one first")
    shapes = {m.shape for _, m, _ in out}
    if len(shapes) > 1:
        raise BadInputError(f"the layers must have the same shape, got {sorted(shapes)}")
    if len(shapes.pop()) != 2:
        raise BadInputError("only 2-D (H, W) Labels layers can be written as one map")
    return out


def write_bundle(path: str, layer_data: list[tuple]) -> list[str]:
    """Class layers as one folder: a 0/1 GeoTIFF per class, ``semantic.tif`` and ``classes.json``.

    ``semantic.tif`` merges the classes by :data:`maskdiffusion.napari.layers.MERGE_RULE`
    (the layers' order). The folder appears complete or not at all.
    """
    from ..geo import raster_io

    folder = Path(path)
    entries = _class_masks(layer_data)
    if folder.exists():
        if not folder.is_dir():
            raise BadInputError(f"{folder} exists and is a file, not a bundle folder: not overwriting it")
        if any(folder.iterdir()) and "bundle" not in _read_json(folder / "classes.json"):
            raise BadInputError(
                f"{folder} is a folder that holds other files, not a MaskDiffusion bundle: not overwriting it"
            )
    if not folder.parent.is_dir():
        raise BadInputError(f"cannot write {folder}: folder {folder.parent} does not exist")

    first_meta = entries[0][2]
    common = {k: v for k, v in first_meta.items()
              if k not in ("kind", "prompt", "classes", "merge_rule", *_NOT_EXPORTED)}
    geo = _geo(first_meta)
    classes = [spec for spec, _, _ in entries]
    files = []
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir()
    try:
        semantic = np.zeros(entries[0][1].shape, label_dtype(len(entries)))
        for k, (spec, mask, _) in enumerate(entries, start=1):
            name = f"{k:02d}_{safe_filename(spec.name)}.tif"
            raster_io.write_labels(tmp / name, mask.astype(np.uint8), [spec], geo,
                                   _export_metadata({**common, "kind": CLASS}, [spec], folder / name))
            semantic[mask] = k
            files.append(name)
        sem_meta = _export_metadata({**common, "kind": SEMANTIC, "merge_rule": MERGE_RULE}, classes,
                                    folder / "semantic.tif")
        raster_io.write_labels(tmp / "semantic.tif", semantic, classes, geo, sem_meta)
        info = {
            **_export_metadata(common, classes, folder / "classes.json"),
            "software": SOFTWARE,
            "bundle": 1,
            "classes": [dict(c.to_dict(), value=i + 1, file=f) for i, (c, f) in enumerate(zip(classes, files))],
            "semantic": "semantic.tif",
            "merge_rule": MERGE_RULE,
        }
        from ..geo.atomic import write_json

        write_json(tmp / "classes.json", info)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(folder / f) for f in (*files, "semantic.tif", "classes.json")]


def _swap_in(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder onto ``folder``, replacing an old bundle only at the end."""
    if not folder.exists():
        os.replace(tmp, folder)
        return
    old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.old")
    os.replace(folder, old)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)

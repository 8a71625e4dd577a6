"""Label maps as files that never replace a file of another kind: one map with its sidecar, or a
class bundle folder (a 0/1 GeoTIFF per class, ``semantic.tif`` and ``classes.json``).

What the napari writers save (:mod:`maskdiffusion.napari.writers` builds the map and the
metadata from layers). A label map only replaces a label map of ours, an RGB label image only
an RGB label image, a bundle only a bundle; everything appears complete or not at all.

Examples
--------
>>> import tempfile, numpy as np
>>> from maskdiffusion.core.classes import ClassSpec
>>> folder = Path(tempfile.mkdtemp())
>>> classes = [ClassSpec("tree", (), (0, 160, 0)), ClassSpec("road", (), (128, 128, 128))]
>>> labels = np.array([[0, 1], [2, 2]], np.uint8)
>>> [Path(p).name for p in write_label_map(folder / "x.tif", labels, classes, None, {"software": "demo"})]
['x.tif', 'x.classes.json']
>>> existing_kind(folder / "x.tif")
'labels'
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec
from ..core.labels import SOFTWARE, label_dtype
from ..errors import BadInputError
from .atomic import write_json
from .raster_io import GeoInfo, sidecar_path, write_isprs_rgb, write_labels, write_sidecar

__all__ = ["existing_kind", "write_class_bundle", "write_label_map"]

_KIND_NAMES = {"folder": "a folder", "labels": "a label map", "rgb labels": "an RGB label image"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def existing_kind(path) -> str | None:
    """What is at ``path`` now: None, "folder", "labels" (ours), "rgb labels" (ours), or "other"."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_dir():
        return "folder"
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            if "CLASSES" in src.tags() and src.count == 1:
                return "labels"
            ours = _read_json(sidecar_path(path)).get("software") == SOFTWARE
            if ours and src.count in (1, 3):
                return "labels" if src.count == 1 else "rgb labels"
    except (RasterioError, OSError):
        pass
    return "other"


def _refuse_other(path: Path, want: str, allowed: str) -> None:
    found = existing_kind(path)
    if found is not None and found != allowed:
        raise BadInputError(f"{path} exists and is {_KIND_NAMES.get(found, 'a file of another kind')}, not {want}: "
                            "not overwriting it; delete it or choose another name")


def write_label_map(path, labels: np.ndarray, classes: Sequence[ClassSpec], geo: GeoInfo | None, metadata: dict,
                    kind: str = "geotiff") -> list[str]:
    """``labels`` (0 = unlabelled, k = k-th class) as a label GeoTIFF (``kind`` "geotiff"), a
    palette PNG ("png", no georeference) or ISPRS colour-coded RGB ("isprs"), with ``metadata``
    as its sidecar. Returns the two paths written."""
    path = Path(path)
    if labels.ndim != 2:
        raise BadInputError(f"{path.name}: only 2-D (H, W) label maps can be written, got shape {labels.shape}")
    if kind == "isprs":
        _refuse_other(path, "an RGB label image", "rgb labels")
        written = write_isprs_rgb(path, labels, classes, geo)
    else:
        _refuse_other(path, "a label map", "labels")
        written = write_labels(path, labels, classes, geo if kind == "geotiff" else None, metadata)
    try:
        sidecar = write_sidecar(path, metadata)
    except BaseException:
        Path(written).unlink(missing_ok=True)
        raise
    return [str(path), str(sidecar)]


def write_class_bundle(folder, masks: Sequence[np.ndarray], classes: Sequence[ClassSpec], geo: GeoInfo | None,
                       metadata: Callable[[str, list[ClassSpec], Path], dict], file_names: Sequence[str]) -> list[str]:
    """One 0/1 GeoTIFF per class (``file_names``), ``semantic.tif`` (a later class wins) and
    ``classes.json`` in ``folder``, which appears complete or not at all and replaces only a
    bundle. ``metadata(kind, classes, path)`` gives each file's metadata."""
    folder = Path(folder)
    if folder.exists():
        if not folder.is_dir():
            raise BadInputError(f"{folder} exists and is a file, not a bundle folder: not overwriting it")
        if any(folder.iterdir()) and "bundle" not in _read_json(folder / "classes.json"):
            raise BadInputError(f"{folder} is a folder that holds other files, not a MaskDiffusion bundle: "
                                "not overwriting it")
    if not folder.parent.is_dir():
        raise BadInputError(f"cannot write {folder}: folder {folder.parent} does not exist")
    tmp = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.mkdir()
    try:
        semantic = np.zeros(masks[0].shape, label_dtype(len(classes)))
        for k, (spec, mask, name) in enumerate(zip(classes, masks, file_names), start=1):
            write_labels(tmp / name, mask.astype(np.uint8), [spec], geo, metadata("class", [spec], folder / name))
            semantic[mask] = k
        write_labels(tmp / "semantic.tif", semantic, classes, geo, metadata("semantic", list(classes),
                                                                             folder / "semantic.tif"))
        info = {**metadata("bundle", list(classes), folder / "classes.json"), "software": SOFTWARE, "bundle": 1,
                "classes": [dict(c.to_dict(), value=i, file=f) for i, (c, f) in enumerate(zip(classes, file_names), 1)],
                "semantic": "semantic.tif"}
        write_json(tmp / "classes.json", info)
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [str(folder / f) for f in (*file_names, "semantic.tif", "classes.json")]


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

"""Our label files, Qt-free: a label map with its sidecar ``X.classes.json`` (GeoTIFF, palette
PNG or ISPRS colour-coded RGB), and class bundle folders (a 0/1 GeoTIFF per class,
``semantic.tif`` and ``classes.json``).

Writing never replaces a file of another kind: a label map only a label map of ours, an RGB
label image only an RGB label image, a bundle only a bundle; everything appears complete or not
at all. Reading gives the map as label values (0 = unlabelled, k = k-th class) and refuses a
sidecar it cannot use in one line. The napari reader and writers turn these into layers.

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
>>> labels_back, classes_back, meta, geo = read_label_map(folder / "x.classes.json")
>>> labels_back.tolist(), [c.name for c in classes_back]
([[0, 1], [2, 2]], ['tree', 'road'])
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, default_color
from ..core.labels import CLASS, SEMANTIC, SOFTWARE, from_stored, label_dtype, label_values
from ..errors import BadInputError
from .atomic import write_json
from .raster_io import GeoInfo, read_image, sidecar_path, write_isprs_rgb, write_labels, write_sidecar

__all__ = ["BUNDLE_FILE", "SIDECAR", "class_masks", "existing_kind", "export_labels", "is_bundle", "label_sidecar",
           "raster_of", "read_label_map", "write_class_bundle", "write_label_map"]

SIDECAR = ".classes.json"
BUNDLE_FILE = "classes.json"
_RASTER_SUFFIXES = (".tif", ".tiff", ".png")

_KIND_NAMES = {"folder": "a folder", "labels": "a label map", "rgb labels": "an RGB label image"}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def raster_of(sidecar) -> Path | None:
    """The label raster beside a sidecar ``X.classes.json`` (``X.tif``, ``X.tiff`` or ``X.png``)."""
    sidecar = Path(sidecar)
    stem = sidecar.name[: -len(SIDECAR)]
    return next((sidecar.with_name(stem + s) for s in _RASTER_SUFFIXES if sidecar.with_name(stem + s).is_file()),
                None)


def label_sidecar(path) -> Path | None:
    """The sidecar of a label raster we wrote (``X.tif`` beside our ``X.classes.json``), else ``None``."""
    path = Path(path)
    if path.suffix.lower() not in _RASTER_SUFFIXES:
        return None
    meta = _read_json(sidecar_path(path))
    return sidecar_path(path) if meta.get("software") == SOFTWARE and "classes" in meta else None


def is_bundle(folder) -> bool:
    """Whether ``folder`` holds a class bundle of ours."""
    data = _read_json(Path(folder) / BUNDLE_FILE)
    return data.get("software") == SOFTWARE and "bundle" in data


def read_sidecar(sidecar) -> tuple[dict, list[ClassSpec]]:
    """A result sidecar's metadata and classes; one line naming the file when it cannot be used."""
    try:
        meta = json.loads(Path(sidecar).read_text(encoding="utf-8"))
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
                  f"list (it has {n} classes): shown as 'unknown class N'", stacklevel=3)
    lookup = np.arange(int(labels.max()) + 1)
    lookup[unknown] = np.arange(n + 1, n + 1 + len(unknown))
    return (lookup[labels].astype(label_dtype(n + len(unknown))),
            classes + [ClassSpec(f"unknown class {v}", (), default_color(n + i)) for i, v in enumerate(unknown)])


def read_label_map(sidecar) -> tuple[np.ndarray, list[ClassSpec], dict, GeoInfo]:
    """The label map beside ``sidecar`` (0 = unlabelled, k = k-th class), its classes, the
    sidecar's metadata and the raster's georeference. An ISPRS-style colour-coded raster is
    decoded by the colours of its classes; stored values the sidecar does not list become
    classes "unknown class N", with a warning."""
    sidecar = Path(sidecar)
    meta, classes = read_sidecar(sidecar)
    raster = raster_of(sidecar)
    if raster is None:
        raise BadInputError(f"{sidecar}: no label raster beside it ({sidecar.name[: -len(SIDECAR)]}.tif or .png)")
    labels, geo = read_image(raster)
    if labels.ndim == 3 and labels.shape[2] >= 3 and labels.dtype == np.uint8 and all(c.color for c in classes):
        from .isprs import decode_isprs_labels

        labels = (decode_isprs_labels(labels[..., :3], classes)[0] + 1).astype(label_dtype(len(classes)))
    elif labels.ndim != 2:
        raise BadInputError(f"{raster} is not a one-band label raster")
    else:
        labels = from_stored(labels, meta, len(classes), what=str(raster))
        labels, classes = _with_unknown_classes(labels, classes, raster, sidecar)
    return labels, classes, meta, geo


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


def _with_classes(metadata: dict, classes: Sequence[ClassSpec]) -> dict:
    """``metadata`` as a sidecar: the classes with their label values, and who wrote it."""
    return {"software": SOFTWARE, **metadata, "classes": [dict(c.to_dict(), value=k) for k, c in enumerate(classes, 1)],
            "label_values": label_values(classes)}


def export_labels(data: np.ndarray, metadata: Mapping) -> tuple[np.ndarray, list[ClassSpec]]:
    """Labels and their metadata (a napari Labels layer's) as (label map, classes) to write
    (value k = ``classes[k - 1]``).

    A class map (``kind`` "class") gives a 0/1 map of its class; a semantic map its classes;
    any other labels one class per value ("label 3").

    Examples
    --------
    >>> labels, classes = export_labels(np.array([[0, 2]]), {"kind": "class", "class": "tree"})
    >>> labels.tolist(), [c.name for c in classes]
    ([[0, 1]], ['tree'])
    """
    data = np.asarray(data)
    if data.dtype.kind not in "uib":
        raise BadInputError(f"labels must be integers, got {data.dtype}")
    if metadata.get("kind") == CLASS:
        spec = ClassSpec(metadata.get("class") or "class", tuple(metadata.get("prompts") or ()),
                         tuple(metadata.get("color") or default_color(0)))
        return (data != 0).astype(np.uint8), [spec]
    if data.size and data.min() < 0:
        raise BadInputError("labels have negative values; napari's labels are 0 (background) or positive")
    top = int(data.max()) if data.size else 0
    by_value = {}
    if metadata.get("kind") == SEMANTIC and metadata.get("classes"):
        by_value = {int(d.get("value", k)): ClassSpec.from_dict(d) for k, d in enumerate(metadata["classes"], 1)}
    classes = [by_value.get(v) or ClassSpec(f"label {v}", (), default_color(v - 1))
               for v in range(1, max(top, max(by_value, default=0)) + 1)]
    return data, classes


def class_masks(items: Sequence[tuple[np.ndarray, Mapping, str | None]]) -> list[tuple[ClassSpec, np.ndarray, Mapping]]:
    """(class, binary mask, metadata) for each class of labels given as (data, metadata, name),
    napari's Labels layers: class and semantic maps give their classes (:func:`export_labels`),
    other labels one class, ``name``, of their non-zero pixels. Refuses, in one line, nothing
    to write, a class held twice, different shapes and stacks."""
    out = []
    for data, metadata, name in items:
        data = np.asarray(data)
        if metadata.get("kind") in (CLASS, SEMANTIC):
            labels, classes = export_labels(data, metadata)
            for value, spec in enumerate(classes, start=1):
                out.append((spec, labels == value, metadata))
        else:
            color = metadata.get("color") or default_color(len(out))
            out.append((ClassSpec(name or f"class {len(out) + 1}", (), tuple(color)), data != 0, metadata))
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


def write_label_map(path, labels: np.ndarray, classes: Sequence[ClassSpec], geo: GeoInfo | None, metadata: dict,
                    kind: str = "geotiff") -> list[str]:
    """``labels`` (0 = unlabelled, k = k-th class) as a label GeoTIFF (``kind`` "geotiff"), a
    palette PNG ("png", no georeference) or ISPRS colour-coded RGB ("isprs"), with ``metadata``
    and the classes as its sidecar. Returns the two paths written."""
    path = Path(path)
    metadata = _with_classes(metadata, classes)
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
                       metadata: Callable[[str, Path], dict], file_names: Sequence[str]) -> list[str]:
    """One 0/1 GeoTIFF per class (``file_names``), ``semantic.tif`` (a later class wins) and
    ``classes.json`` in ``folder``, which appears complete or not at all and replaces only a
    bundle. ``metadata(kind, path)`` gives the metadata of each file ("class", "semantic",
    "bundle"), to which the classes are added."""
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
            write_labels(tmp / name, mask.astype(np.uint8), [spec], geo,
                         _with_classes(metadata("class", folder / name), [spec]))
            semantic[mask] = k
        write_labels(tmp / "semantic.tif", semantic, classes, geo,
                     _with_classes(metadata("semantic", folder / "semantic.tif"), classes))
        info = {**_with_classes(metadata("bundle", folder / BUNDLE_FILE), classes), "bundle": 1,
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

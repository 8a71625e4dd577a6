"""Session bundles: a session saved as a folder ``NAME.mdsession/`` and opened again.

::

    session.json              format, version, image reference, classes, parameters, file names
    labels-<id>.npy           (H, W) label map: 0 = unlabelled, k = the k-th class (version 1: int16
                              0-based class index, -1 = no class; read and converted)
    edited-<id>.npy           the (H, W) bool mask of annotator-set pixels, np.packbits'ed
    attention-<id>.npy        (K, gh, gw) float32 class maps (zero for example-only classes)
    features-<id>.npy         (D, gh, gw) reduced features (float16)
    base-<id>.npy             (K, gh, gw) float32 scores of the run on the grid (optional)
    prior-<id>.npy, prior_share-<id>.npy  what a dataset's class memory taught (optional)

Each array is written to a new name, atomically, then ``session.json`` (atomically) names the
new set, then files it no longer names are removed: a crash at any point leaves a bundle that
opens, at the previous or the new save. The features, large and fixed after the run, are
written once. Only :func:`save_session` and :func:`load_session` import the model-side code,
so checking a path (:func:`is_session`) stays cheap.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .core.labels import SOFTWARE
from .errors import BadInputError

if TYPE_CHECKING:
    from .session import Session

__all__ = ["FORMAT", "INDEX", "SUFFIX", "VERSION", "SessionError", "bundle_path", "is_session", "load_session",
           "save_session"]

FORMAT = "maskdiffusion-session"
VERSION = 2
SUFFIX = ".mdsession"
INDEX = "session.json"
_ARRAYS = ("labels", "edited", "attention", "features")
_OPTIONAL = ("base", "prior", "prior_share")


class SessionError(BadInputError):
    """A session bundle that cannot be opened, with what is wrong in one sentence."""



def bundle_path(path: str | Path) -> Path:
    """The bundle folder of ``path``: the folder itself, its ``session.json``, or a name without ``.mdsession``."""
    path = Path(path)
    if path.name == INDEX:
        path = path.parent
    return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def is_session(path: str | Path) -> bool:
    """Whether ``path`` (the folder or its ``session.json``) looks like a session bundle."""
    folder = bundle_path(path)
    try:
        return json.loads((folder / INDEX).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_array(folder: Path, name: str, array: np.ndarray, token: str | None = None) -> str:
    from .geo.atomic import atomic_output

    filename = f"{name}-{token or uuid.uuid4().hex[:12]}.npy"
    if token is not None and (folder / filename).exists():
        return filename
    with atomic_output(folder / filename) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    return filename


def _class_entries(session: Session) -> list[dict]:
    state = session.state
    return [dict(c.to_dict(), from_text=t, id=i) for c, t, i in zip(state.classes, state.from_text, session.class_ids)]


def save_session(path: str | Path, session: Session) -> Path:
    """Write ``session`` to the bundle folder ``path`` (``.mdsession`` is added if missing).

    The refinement cache is built first if it is not yet (:meth:`Session.prepare`).
    """
    from . import __version__
    from .geo.atomic import write_json

    folder = bundle_path(path)
    state = session.prepare()
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "labels": _write_array(folder, "labels", session.labels),
        "edited": _write_array(folder, "edited", session.edited.bits),
        "attention": _write_array(folder, "attention", state.attention.astype(np.float32, copy=False)),
        "features": _write_array(folder, "features", state.features, state.features_id),
    }
    for name in _OPTIONAL:
        if getattr(state, name) is not None:
            arrays[name] = _write_array(folder, name, getattr(state, name).astype(np.float32, copy=False))
    index = {
        "format": FORMAT,
        "version": VERSION,
        "software": SOFTWARE,
        "software_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": session.image,
        "shape": list(state.shape),
        "classes": _class_entries(session),
        "parameters": session.parameters,
        "model": session.model,
        "refine": {"stride": state.stride, "reduction": state.reduction, "features_id": state.features_id,
                   "prior_cells": session.prior_cells, "normalize": session.normalize},
        "arrays": arrays,
    }
    write_json(folder / INDEX, index)
    keep = set(arrays.values()) | {INDEX}
    for f in folder.glob("*.npy"):
        if f.name not in keep:
            f.unlink(missing_ok=True)
    return folder


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionError(f"{folder} is not a session bundle: it has no {INDEX}") from None
    except (OSError, ValueError) as e:
        raise SessionError(f"cannot read {folder / INDEX}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise SessionError(f"{folder / INDEX} is not a MaskDiffusion session (format {index.get('format')!r})"
                           if isinstance(index, dict) else f"{folder / INDEX} is not a MaskDiffusion session")
    version = index.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise SessionError(f"session {folder} has version {version!r}; this software reads versions up to {VERSION}")
    return index


def _load_array(folder: Path, index: dict, name: str) -> np.ndarray:
    filename = (index.get("arrays") or {}).get(name)
    if not filename:
        raise SessionError(f"session {folder} lists no {name} array")
    try:
        return np.load(folder / filename, allow_pickle=False)
    except FileNotFoundError:
        raise SessionError(f"session {folder} is incomplete: {filename} is missing") from None
    except (OSError, ValueError, EOFError) as e:
        raise SessionError(f"session {folder}: {filename} is damaged ({e})") from None


def load_session(path: str | Path) -> Session:
    """Open a bundle written by :func:`save_session`; :class:`SessionError` if it is broken."""
    from .core.classes import ClassSpec
    from .core.confidence import grid_margin
    from .core.labels import from_index, label_dtype
    from .core.refine import PRIOR_CELLS, RefineState, refined_scores
    from .session import Session

    folder = bundle_path(path)
    if not folder.is_dir():
        raise SessionError(f"no session bundle at {folder}")
    index = _read_index(folder)
    arrays = {name: _load_array(folder, index, name) for name in _ARRAYS}
    optional = {name: _load_array(folder, index, name).astype(np.float32, copy=False)
                for name in _OPTIONAL if name in (index.get("arrays") or {})}
    try:
        shape = tuple(int(n) for n in index["shape"])
        classes = tuple(ClassSpec.from_dict(d) for d in index["classes"])
        from_text = tuple(bool(d.get("from_text", True)) for d in index["classes"])
        refine = index["refine"]
        labels = arrays["labels"]
        if index["version"] == 1:
            labels = from_index(labels.astype(np.int64), len(classes))
        edited = np.unpackbits(arrays["edited"], count=int(np.prod(shape))).astype(bool).reshape(shape)
        if labels.shape != shape or labels.dtype.kind not in "iu":
            raise SessionError(f"the label map has shape {labels.shape} and type {labels.dtype}, "
                             f"expected {shape} integers")
        state = RefineState(arrays["features"], arrays["attention"].astype(np.float32, copy=False), classes, shape,
                              float(refine["stride"]), from_text, dict(refine.get("reduction") or {}),
                              str(refine.get("features_id") or uuid.uuid4().hex[:12]), **optional)
    except SessionError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise SessionError(f"session {folder} is inconsistent: {detail}") from None
    ids = tuple(str(d.get("id") or "") for d in index["classes"])
    session = Session(labels.astype(label_dtype(len(classes)), copy=False), edited, state,
                      dict(index.get("image") or {}),
                      dict(index.get("parameters") or {}), str(index.get("model") or ""),
                      float(refine.get("prior_cells", PRIOR_CELLS)), bool(refine.get("normalize", False)),
                      class_list=classes, class_ids=ids if all(ids) and len(set(ids)) == len(ids) else ())
    session.margin = grid_margin(refined_scores(state, labels, edited, prior_cells=session.prior_cells,
                                                    normalize=session.normalize))
    return session

"""An annotation session: one model run, the annotator's edits, and refinement with undo.

:class:`Session` is the Qt-free controller behind the napari refine widget, usable from
Python: give it the current label map, it marks what the annotator changed since the last
refinement, refines (:mod:`maskdiffusion.core.refine`) and keeps an undo history.

**Bundle.** :meth:`Session.save` writes a folder ``NAME.mdsession/``::

    session.json              format, version, image reference, classes, parameters, file names
    labels-<id>.npy           (H, W) label map: 0 = unlabelled, k = the k-th class (version 1: int16
                              0-based class index, -1 = no class; read and converted)
    edited-<id>.npy           the (H, W) bool mask of annotator-set pixels, np.packbits'ed
    attention-<id>.npy        (K, gh, gw) float32 class maps (zero for example-only classes)
    features-<id>.npy         (D, gh, gw) reduced features (float16)
    base-<id>.npy             (K, gh, gw) float32 scores of the run on the grid (optional)

Each array is written to a new name, atomically, then ``session.json`` (atomically) names the
new set, then files it no longer names are removed: a crash at any point leaves a bundle that
opens, at the previous or the new save. The features, large and fixed after the run, are
written once. :func:`load_session` reads it back (:class:`SessionError` when broken).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .core.class_edits import add_class, merge_classes, remove_class, rename_class
from .core.confidence import grid_margin
from .core.labels import from_index
from .core.refine import PRIOR_CELLS, RefineState, assign, refined_scores
from .core.classes import ClassSpec
from .errors import BadInputError

__all__ = ["FORMAT", "VERSION", "SUFFIX", "Session", "SessionError", "is_session", "load_session", "save_session"]

FORMAT = "maskdiffusion-session"
VERSION = 2
SUFFIX = ".mdsession"
_INDEX = "session.json"
_ARRAYS = ("labels", "edited", "attention", "features")
#: Refinements and class changes the undo history keeps, and the memory it may take (the
#: latest step is always kept).
HISTORY = 20
HISTORY_BYTES = 512 << 20
#: The session's label maps are uint16 whatever the class count, so classes can be added.
LABELS_DTYPE = np.uint16


class SessionError(BadInputError):
    """A session bundle that cannot be opened, with what is wrong in one sentence."""


@dataclass
class _Step:
    """What one refinement or class change replaced: enough to put it back exactly."""

    what: str
    state: RefineState
    changed: np.ndarray
    before: np.ndarray
    edited: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return self.changed.nbytes + self.before.nbytes + (0 if self.edited is None else self.edited.nbytes)


@dataclass
class Session:
    """One image's refinement session.

    state: the run's :class:`~maskdiffusion.core.refine.RefineState` (features, maps, classes).
    labels: (H, W) label map (0 = unlabelled, k = class k) as the last refinement left it.
    edited: (H, W) bool, the pixels the annotator set (kept exactly, learnt from).
    image: reference to the image: ``path``, ``layer`` (napari layer name), ``georeference``,
        ``plane`` (stack index), ``shape``.
    parameters, model: those of the run.
    prior_cells, normalize: the refinement's weighting (see ``class_prototypes``).
    margin: (gh, gw) grid confidence of the last refinement (the draft's before one).
    """

    state: RefineState
    labels: np.ndarray
    edited: np.ndarray
    image: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    model: str = ""
    prior_cells: float = PRIOR_CELLS
    normalize: bool = False
    margin: np.ndarray | None = None
    history: list = field(default_factory=list, repr=False)

    @classmethod
    def from_result(cls, result, image: dict | None = None, dims: int | str | None = "auto") -> Session:
        """A session on a result made with ``keep_features=True``; the draft is the start."""
        state = RefineState.from_result(result, dims=dims)
        labels = result.labels.astype(LABELS_DTYPE)
        session = cls(state, labels, np.zeros(labels.shape, bool), dict(image or {}), result.params.to_dict(),
                      result.model)
        session.margin = grid_margin(refined_scores(state))
        return session

    @property
    def classes(self) -> tuple[ClassSpec, ...]:
        return self.state.classes

    # ------------------------------------------------------------------ edits and refinement

    def sync(self, current: np.ndarray) -> int:
        """Take the annotator's map: pixels that differ from :attr:`labels` become edited.

        If ``current`` shows the last step undone outside the session (Ctrl-Z on a napari
        layer), the session undoes it too instead of taking it for edits. Returns the number
        of newly edited pixels.
        """
        current = np.asarray(current)
        if current.shape != self.labels.shape:
            raise SessionError(f"label map {current.shape} does not match the session's {self.labels.shape}")
        if self.history and self._undone_outside(current):
            self.undo()
        diff = current != self.labels
        fresh = int(np.count_nonzero(diff & ~self.edited))
        if diff.any():
            self.edited |= diff
            self.labels = current.astype(LABELS_DTYPE)
        return fresh

    def _undone_outside(self, current: np.ndarray) -> bool:
        step = self.history[-1]
        if not len(step.changed):
            return False
        return bool(np.array_equal(current.reshape(-1)[step.changed], step.before))

    def _push(self, what: str, new_labels: np.ndarray, state_before: RefineState,
              edited_before: np.ndarray | None = None) -> np.ndarray:
        old, new = self.labels.reshape(-1), new_labels.reshape(-1)
        changed = np.flatnonzero(old != new)
        changed = changed.astype(np.int32) if old.size < 2**31 else changed
        self.history.append(_Step(what, state_before, changed, old[changed].copy(),
                                  None if edited_before is None else np.packbits(edited_before)))
        del self.history[:-HISTORY]
        while len(self.history) > 1 and sum(step.nbytes for step in self.history) > HISTORY_BYTES:
            del self.history[0]
        self.labels = new_labels.astype(LABELS_DTYPE, copy=False)
        return self.labels

    def refine(self, current: np.ndarray | None = None) -> np.ndarray:
        """Refine from the edits (after :meth:`sync` of ``current``); one undo step.

        Returns the new (H, W) label map; edited pixels are unchanged.
        """
        if current is not None:
            self.sync(current)
        scores = refined_scores(self.state, self.labels, self.edited, prior_cells=self.prior_cells,
                                  normalize=self.normalize)
        new = assign(scores, self.state.shape, self.state.stride, labels=self.labels, fixed=self.edited)
        self.margin = grid_margin(scores)
        return self._push("refine", new, self.state)

    def undo(self) -> np.ndarray | None:
        """Put back the map, classes and edits from before the last step; ``None`` if none."""
        if not self.history:
            return None
        step = self.history.pop()
        flat = self.labels.reshape(-1).copy()
        flat[step.changed] = step.before
        self.labels = flat.reshape(self.labels.shape)
        self.state = step.state
        if step.edited is not None:
            self.edited = np.unpackbits(step.edited, count=self.labels.size).astype(bool).reshape(self.labels.shape)
        return self.labels

    # ------------------------------------------------------------------ classes

    def add_class(self, spec: ClassSpec | str) -> int:
        """Add a class defined by example (paint it, then refine); returns its index."""
        before = self.state
        self.state = add_class(self.state, spec)
        self._push("add class", self.labels.copy(), before)
        return self.state.n_classes - 1

    def remove_class(self, k: int, current: np.ndarray | None = None) -> np.ndarray:
        """Remove class ``k``; its pixels go to the best remaining class. One undo step."""
        if current is not None:
            self.sync(current)
        before, edited = self.state, self.edited.copy()
        self.state, new, self.edited = remove_class(self.state, self.labels, self.edited, k,
                                                      prior_cells=self.prior_cells, normalize=self.normalize)
        return self._push("remove class", new, before, edited)

    def merge_classes(self, sources: Sequence[int] | int, into: int, current: np.ndarray | None = None) -> np.ndarray:
        """Merge ``sources`` into class ``into`` (pixels and strokes). One undo step."""
        if current is not None:
            self.sync(current)
        before = self.state
        self.state, new, _ = merge_classes(self.state, self.labels, self.edited, sources, into)
        return self._push("merge classes", new, before)

    def rename_class(self, k: int, name: str, color: Sequence[int] | None = None) -> None:
        """Rename (and recolour) class ``k``; its pixels stay. One undo step."""
        before = self.state
        self.state = rename_class(self.state, k, name, color)
        self._push("rename class", self.labels.copy(), before)

    # ------------------------------------------------------------------ files

    def save(self, path: str | Path) -> Path:
        """Write the bundle (see the module); returns the folder."""
        return save_session(path, self)

    @classmethod
    def load(cls, path: str | Path) -> Session:
        return load_session(path)


# --------------------------------------------------------------------------- bundle


def _bundle_path(path: str | Path) -> Path:
    path = Path(path)
    if path.name == _INDEX:
        path = path.parent
    return path if path.suffix == SUFFIX else path.with_name(path.name + SUFFIX)


def is_session(path: str | Path) -> bool:
    """Whether ``path`` (the folder or its ``session.json``) looks like a session bundle."""
    folder = _bundle_path(path)
    try:
        return json.loads((folder / _INDEX).read_text(encoding="utf-8")).get("format") == FORMAT
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


def _class_entries(state: RefineState) -> list[dict]:
    return [dict(c.to_dict(), from_text=t) for c, t in zip(state.classes, state.from_text)]


def save_session(path: str | Path, session: Session) -> Path:
    """Write ``session`` to the bundle folder ``path`` (``.mdsession`` is added if missing)."""
    from . import __version__
    from .geo.atomic import write_json

    folder = _bundle_path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = session.state
    arrays = {
        "labels": _write_array(folder, "labels", session.labels.astype(LABELS_DTYPE, copy=False)),
        "edited": _write_array(folder, "edited", np.packbits(session.edited)),
        "attention": _write_array(folder, "attention", state.attention.astype(np.float32, copy=False)),
        "features": _write_array(folder, "features", state.features, state.features_id),
    }
    if state.base is not None:
        arrays["base"] = _write_array(folder, "base", state.base.astype(np.float32, copy=False))
    index = {
        "format": FORMAT,
        "version": VERSION,
        "software": "napari-maskdiffusion",
        "software_version": __version__,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image": session.image,
        "shape": list(state.shape),
        "classes": _class_entries(state),
        "parameters": session.parameters,
        "model": session.model,
        "refine": {"stride": state.stride, "reduction": state.reduction, "features_id": state.features_id,
                   "prior_cells": session.prior_cells, "normalize": session.normalize},
        "arrays": arrays,
    }
    write_json(folder / _INDEX, index)
    keep = set(arrays.values()) | {_INDEX}
    for f in folder.glob("*.npy"):
        if f.name not in keep:
            f.unlink(missing_ok=True)
    return folder


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / _INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SessionError(f"{folder} is not a session bundle: it has no {_INDEX}") from None
    except (OSError, ValueError) as e:
        raise SessionError(f"cannot read {folder / _INDEX}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise SessionError(f"{folder / _INDEX} is not a MaskDiffusion session (format {index.get('format')!r})"
                           if isinstance(index, dict) else f"{folder / _INDEX} is not a MaskDiffusion session")
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
    folder = _bundle_path(path)
    if not folder.is_dir():
        raise SessionError(f"no session bundle at {folder}")
    index = _read_index(folder)
    arrays = {name: _load_array(folder, index, name) for name in _ARRAYS}
    base = _load_array(folder, index, "base") if "base" in (index.get("arrays") or {}) else None
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
            raise ValueError(f"the label map has shape {labels.shape} and type {labels.dtype}, "
                             f"expected {shape} integers")
        state = RefineState(arrays["features"], arrays["attention"].astype(np.float32, copy=False), classes, shape,
                              float(refine["stride"]), from_text, dict(refine.get("reduction") or {}),
                              str(refine.get("features_id") or uuid.uuid4().hex[:12]),
                              None if base is None else base.astype(np.float32, copy=False))
    except (KeyError, TypeError, ValueError) as e:
        detail = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise SessionError(f"session {folder} is inconsistent: {detail}") from None
    session = Session(state, labels.astype(LABELS_DTYPE, copy=False), edited, dict(index.get("image") or {}),
                      dict(index.get("parameters") or {}), str(index.get("model") or ""),
                      float(refine.get("prior_cells", PRIOR_CELLS)), bool(refine.get("normalize", False)))
    session.margin = grid_margin(refined_scores(state, session.labels, edited, prior_cells=session.prior_cells,
                                                    normalize=session.normalize))
    return session

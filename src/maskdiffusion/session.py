"""An annotation session: one model run, the annotator's edits, and refinement, with one undo
history for all of them.

:class:`Session` is the Qt-free controller behind the napari dock, usable from Python: it takes
the annotator's strokes, refines (:mod:`maskdiffusion.core.refine`), changes classes and undoes
or redoes any of these. Session bundles (``.mdsession`` folders) are :mod:`.session_bundle`'s.
"""


from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .core.class_edits import add_class, keep_classes, merge_classes, remove_class, rename_class
from .core.classes import ClassSpec, as_class_specs, default_color, new_class_id
from .core.confidence import grid_margin
from .core.labels import STROKE, label_dtype, merge_masks
from .core.marks import Marks
from .core.refine import PRIOR_CELLS, RefineState, assign, refined_scores
from .errors import BadInputError, NeedsFeaturesError

__all__ = ["Session", "steps_together"]

#: Refinements and class changes the undo history keeps, and the memory it may take (the
#: latest step is always kept).
HISTORY = 20
HISTORY_BYTES = 512 << 20


@dataclass
class _Step:
    """One undoable step: the label values it changed as XOR differences (applied once more,
    they undo it), the edited marks it flipped, and the refinement state, classes and class ids
    before and after it.

    A small change keeps the sorted flat indices of its pixels (``changed``) and their
    differences; a large one (a refinement of a 6000² tile changes millions of pixels) keeps
    the whole map of differences, zlib-compressed, when that is smaller than the indices (zero
    where nothing changed, it shrinks tenfold or more); ``changed`` is then None. ``group``
    ties together the steps one change made on every plane of a stack.
    """

    what: str
    changed: np.ndarray | None
    xor: np.ndarray | bytes
    flipped: np.ndarray
    n_changed: int
    state_before: RefineState | None
    state_after: RefineState | None
    classes_before: tuple
    classes_after: tuple
    ids_before: tuple
    ids_after: tuple
    group: object = None
    dtype: np.dtype = np.dtype(np.uint8)

    @classmethod
    def sparse(cls, what: str, labels: np.ndarray, index: np.ndarray, after: np.ndarray, **fields) -> _Step:
        """A step setting the pixels at ``index`` (sorted flat indices) to ``after``."""
        index = _index_dtype(index, labels.size)
        xor = labels.reshape(-1)[index] ^ np.asarray(after, labels.dtype)
        return cls(what, index, xor, n_changed=len(index), **fields)

    @classmethod
    def between(cls, what: str, labels: np.ndarray, new: np.ndarray, **fields) -> _Step:
        """A step turning the whole map ``labels`` into ``new``, sparse or dense by size."""
        xor = np.bitwise_xor(labels.reshape(-1), np.asarray(new, labels.dtype).reshape(-1))
        n = int(np.count_nonzero(xor))
        index_bytes = np.dtype(np.int32 if labels.size < 2**31 else np.int64).itemsize + xor.itemsize
        if n * index_bytes > xor.nbytes // DENSE_SHRINK:
            packed = zlib.compress(xor, 1)
            if len(packed) < n * index_bytes:
                return cls(what, None, packed, n_changed=n, dtype=xor.dtype, **fields)
        index = _flat_index(xor)
        return cls(what, index, xor[index], n_changed=n, **fields)

    def apply(self, labels: np.ndarray) -> None:
        """Do the step's label changes on ``labels`` (in place), or undo them if done."""
        flat = labels.reshape(-1)
        if self.changed is None:
            flat ^= np.frombuffer(zlib.decompress(self.xor), self.dtype).astype(labels.dtype, copy=False)
            return
        for i in range(0, len(self.changed), CHUNK):
            part = self.changed[i:i + CHUNK]
            flat[part] ^= self.xor[i:i + CHUNK]

    @property
    def nbytes(self) -> int:
        changed = 0 if self.changed is None else self.changed.nbytes
        return changed + (len(self.xor) if self.changed is None else self.xor.nbytes) + self.flipped.nbytes


#: A whole-map change whose indices would take more than the map of differences over this is
#: compressed, and kept so if that is smaller than the indices.
DENSE_SHRINK = 16

#: Pixels one fancy-indexing call touches: a session step of a 6000² map is done in pieces, so a
#: worker thread doing it never holds the interpreter for long (the interface stays fluid).
CHUNK = 1 << 22

def _flat_index(mask: np.ndarray) -> np.ndarray:
    return _index_dtype(np.flatnonzero(mask), mask.size)


def _index_dtype(index: np.ndarray, size: int) -> np.ndarray:
    """Flat pixel indices in int32 when they fit (half the memory of an undo step)."""
    return index.astype(np.int32 if size < 2**31 else np.int64, copy=False)


def _slim(result):
    """The parts of a result refinement needs: its features and maps, not its pixel arrays."""
    shape = result.labels.shape
    return replace(result, labels=np.broadcast_to(np.uint8(0), shape), confidence=None, scores=None)


@dataclass
class Session:
    """One image plane's annotation: the label map, what the annotator set, and refinement.

    The session owns the undo history of everything that changes the map — a model run, the
    annotator's strokes, a refinement, a class change — so undo and redo always leave every
    pixel with exactly one value, whichever face (napari layers, Python) made the change.

    labels: (H, W) uint8 (uint16 above 255 classes) label map, 0 = unlabelled, k = class k. It
        changes only through the session's methods, so that every change can be undone.
    edited: the pixels the annotator set (kept exactly, learnt from): :class:`~.core.marks.Marks`,
        a bit a pixel (an (H, W) bool array given here is packed).
    state: the :class:`~maskdiffusion.core.refine.RefineState` (features, maps, classes), or
        ``None`` until :meth:`prepare` builds it from the run kept for it, or for ever when the
        session was made from a label file (no features: no refinement, no class by example).
    image: reference to the image: ``path``, ``layer`` (napari layer name), ``georeference``,
        ``plane`` (stack index), ``shape``.
    parameters, model: those of the run.
    class_ids: a stable id per class (:func:`new_class_id`), by which the napari layers know
        their class whatever its position or name.
    prior_cells, normalize: the refinement's weighting (``docs/algorithm.md`` §4).
    margin: (gh, gw) grid confidence of the last refinement (the draft's before one).

    Examples
    --------
    >>> import numpy as np
    >>> from maskdiffusion import segment
    >>> image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    >>> result = segment(image, "road,tree", "random:tiny", tile_size=128, keep_features=True)
    >>> session = Session.from_result(result)
    >>> before = session.labels.copy()
    >>> strokes = session.labels.copy(); strokes[:20, :20] = 2
    >>> painted = np.zeros(strokes.shape, bool); painted[:20, :20] = True
    >>> session.edit(strokes, painted)
    400
    >>> labels = session.refine()
    >>> bool((labels[:20, :20] == 2).all())
    True
    >>> session.undo() is not None and session.undo() is not None  # the refinement, then the stroke
    True
    >>> bool((session.labels == before).all())
    True
    """

    labels: np.ndarray
    edited: Marks
    state: RefineState | None = None
    image: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    model: str = ""
    prior_cells: float = PRIOR_CELLS
    normalize: bool = False
    margin: np.ndarray | None = None
    history: list = field(default_factory=list, repr=False)
    future: list = field(default_factory=list, repr=False)
    class_list: tuple = ()
    class_ids: tuple = ()
    _pending: object = field(default=None, repr=False)
    _dims: int | str | None = "auto"
    _preparing: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self):
        if not self.class_list and self.state is not None:
            self.class_list = tuple(self.state.classes)
        self.labels = np.asarray(self.labels)
        if self.labels.ndim != 2 or self.labels.dtype.kind not in "ub":
            raise BadInputError(f"a label map is an (H, W) array of unsigned integers, not {self.labels.shape} "
                                f"{self.labels.dtype}")
        top = max(len(self.classes), int(self.labels.max()) if self.labels.size else 0)
        self.labels = self.labels.astype(np.result_type(label_dtype(top), np.uint8), copy=True)
        if not isinstance(self.edited, Marks):
            self.edited = Marks.from_mask(self.edited)
        if len(self.class_ids) != len(self.classes):
            self.class_ids = tuple(new_class_id() for _ in self.classes)

    @classmethod
    def from_result(cls, result, image: dict | None = None, dims: int | str | None = "auto",
                    prepare: bool = True, class_ids: Sequence[str] | None = None) -> Session:
        """A session on a run's result, its draft the start.

        With ``keep_features=True`` results refinement is possible: ``prepare=True`` builds its
        cache now, ``prepare=False`` keeps the result until :meth:`prepare` (which the napari
        dock calls on a worker thread). ``class_ids``: the classes' ids (new ones by default).
        """
        session = cls(result.labels, Marks(result.labels.shape), None, dict(image or {}), result.params.to_dict(),
                      result.model, class_list=tuple(result.classes), class_ids=tuple(class_ids or ()))
        if getattr(result, "features", None) is not None:
            session._pending, session._dims = _slim(result), dims
            if prepare:
                session.prepare()
        return session

    @classmethod
    def from_class_maps(cls, maps: Sequence[np.ndarray], classes: Sequence[ClassSpec],
                        class_ids: Sequence[str | None] = (), stroke: int = STROKE, **fields) -> Session:
        """A session from one (H, W) map per class (the napari class layers): non-zero pixels
        are the class, a later map winning where two overlap; ``stroke`` marks the pixels the
        annotator set. ``class_ids``: the classes' ids (a missing one is new; all are new when
        two repeat). ``fields``: the other :class:`Session` fields (``image``, ``model``...).

        Examples
        --------
        >>> classes = [ClassSpec("tree"), ClassSpec("road")]
        >>> session = Session.from_class_maps([np.array([[1, 2, 0]]), np.array([[0, 1, 1]])], classes)
        >>> session.labels.tolist(), np.asarray(session.edited).tolist()
        ([[1, 2, 2]], [[False, True, False]])
        """
        maps = [np.asarray(data) for data in maps]
        labels = merge_masks(maps)
        edited = np.zeros(labels.shape, bool)
        for data in maps:
            edited |= data == stroke
        ids = [i or new_class_id() for i in class_ids]
        return cls(labels, edited, class_list=tuple(classes),
                   class_ids=tuple(ids) if len(set(ids)) == len(ids) else (), **fields)

    @property
    def classes(self) -> tuple[ClassSpec, ...]:
        """The classes in label-value order (value k = ``classes[k - 1]``)."""
        return tuple(self.class_list)

    def class_index(self, name: str) -> int:
        """The 0-based index of the class named ``name`` (any case); one line if there is none."""
        for k, c in enumerate(self.classes):
            if c.name.lower() == name.lower():
                return k
        raise BadInputError(f"no class named {name!r}")

    def memory(self) -> dict[str, int]:
        """Bytes the session holds, by part: ``map``, ``marks`` (the painted pixels), ``cache``
        (the refinement's arrays, of every state an undo step keeps, its margin and a run not
        yet prepared) and ``history`` (the undo and redo steps)."""
        steps = [*self.history, *self.future]
        states = [self.state, *(s.state_before for s in steps), *(s.state_after for s in steps)]
        arrays = [a for st in states if st is not None for a in st.arrays]
        pending = self._pending
        if pending is not None:
            arrays += [pending.features, pending.attention, getattr(pending, "grid_scores", None)]
        unique = {id(a): a for a in (*arrays, self.margin) if isinstance(a, np.ndarray)}
        return {"map": self.labels.nbytes, "marks": self.edited.nbytes,
                "cache": sum(a.nbytes for a in unique.values()), "history": sum(s.nbytes for s in steps)}

    @property
    def can_refine(self) -> bool:
        """Whether refinement is possible (now, or after :meth:`prepare`)."""
        return self.state is not None or self._pending is not None

    @property
    def prepared(self) -> bool:
        return self.state is not None

    def prepare(self) -> RefineState:
        """Build the refinement cache from the kept run (seconds on a 6000² tile); idempotent.

        Thread-safe: the napari dock builds it on a worker as soon as a run is shown, while
        strokes still come in (it reads copies of the map and marks), and a Refine meanwhile
        waits for that build instead of starting its own. A run that replaces this one
        meanwhile (:meth:`replace_run`) is the one built.
        """
        with self._preparing:
            while self.state is None:
                pending = self._pending
                if pending is None:
                    raise NeedsFeaturesError()
                state = RefineState.from_result(pending, dims=self._dims)
                labels, edited = self.labels.copy(), np.asarray(self.edited)  # copies: strokes may come
                margin = grid_margin(refined_scores(state, labels, edited,
                                                    prior_cells=self.prior_cells, normalize=self.normalize))
                if self._pending is pending:
                    if len(state.classes) == len(self.class_list):
                        state = replace(state, classes=tuple(self.class_list))  # renamed meanwhile
                    self.state, self._pending, self.margin = state, None, margin
            return self.state

    def snapshot(self) -> Session:
        """A copy to save while this session goes on changing: the map and marks copied
        (milliseconds), the refinement cache shared (it is replaced, never changed in place), no
        undo history.

        Examples
        --------
        >>> import numpy as np
        >>> session = Session(np.ones((4, 6), np.uint8), np.zeros((4, 6), bool), class_list=("road",))
        >>> saved = session.snapshot()
        >>> session.edit(np.zeros((4, 6), np.uint8), np.ones((4, 6), bool))
        24
        >>> int(saved.labels.sum()), bool(saved.edited.any()), len(saved.history)
        (24, False, 0)
        """
        return replace(self, labels=self.labels.copy(), edited=self.edited.copy(), image=dict(self.image),
                       parameters=dict(self.parameters), history=[], future=[], _preparing=threading.Lock())

    # ------------------------------------------------------------------ history

    def _fit(self, top: int) -> None:
        """Widen the map's dtype, if needed, before values up to ``top`` are written."""
        if top > np.iinfo(self.labels.dtype).max:
            self.labels = self.labels.astype(label_dtype(top))

    def _record(self, what: str, flipped: np.ndarray, new_state: RefineState | None = None, *,
                changed: np.ndarray | None = None, after: np.ndarray | None = None,
                new_labels: np.ndarray | None = None, classes: tuple | None = None, ids: tuple | None = None,
                group: object = None) -> np.ndarray:
        """Apply a change and keep it as one undo step: new label values at sorted flat pixel indices
        (``changed``, ``after``), or a whole new map (``new_labels``); ``flipped``: the flat indices
        of the edited marks it flips; ``classes``/``ids``: the class list after it (by default the
        new state's, or unchanged)."""
        state_after = new_state if new_state is not None else self.state
        if classes is None:
            classes = tuple(new_state.classes) if new_state is not None else tuple(self.class_list)
        ids = tuple(self.class_ids) if ids is None else tuple(ids)
        values = np.asarray(new_labels if new_labels is not None else after)
        self._fit(max(len(classes), int(values.max()) if values.size else 0))
        fields = dict(flipped=_index_dtype(flipped, self.labels.size), state_before=self.state,
                      state_after=state_after, classes_before=tuple(self.classes), classes_after=classes,
                      ids_before=tuple(self.class_ids), ids_after=ids, group=group)
        if new_labels is not None:
            step = _Step.between(what, self.labels, values, **fields)
        else:
            step = _Step.sparse(what, self.labels, changed, after, **fields)
        step.apply(self.labels)
        self.edited.flip(step.flipped)
        self.state, self.class_list, self.class_ids = state_after, classes, ids
        self.history.append(step)
        self.future.clear()
        del self.history[:-HISTORY]
        while len(self.history) > 1 and sum(s.nbytes for s in self.history) > HISTORY_BYTES:
            del self.history[0]
        return self.labels

    def _push(self, what: str, new_labels: np.ndarray, new_edited: np.ndarray | None = None,
              new_state: RefineState | None = None, **change) -> np.ndarray:
        """Make ``new_labels`` (and ``new_edited``, ``new_state``, the class list in ``change``)
        current as one undo step."""
        flipped = (_flat_index(np.asarray(self.edited).reshape(-1) != np.asarray(new_edited, bool).reshape(-1))
                   if new_edited is not None else np.empty(0, np.int32))
        return self._record(what, flipped, new_state, new_labels=new_labels, **change)

    def _apply(self, step: _Step, undoing: bool) -> None:
        step.apply(self.labels)
        self.edited.flip(step.flipped)
        if step.state_before is not step.state_after:  # a stroke made before prepare() keeps the cache
            self.state = step.state_before if undoing else step.state_after
        self.class_list = step.classes_before if undoing else step.classes_after
        self.class_ids = step.ids_before if undoing else step.ids_after

    def undo(self) -> np.ndarray | None:
        """Put back the map, classes and edits from before the last step; ``None`` if none."""
        if not self.history:
            return None
        step = self.history.pop()
        self._apply(step, undoing=True)
        self.future.append(step)
        return self.labels

    def redo(self) -> np.ndarray | None:
        """Do again the last undone step; ``None`` if none."""
        if not self.future:
            return None
        step = self.future.pop()
        self._apply(step, undoing=False)
        self.history.append(step)
        return self.labels

    @property
    def last_step(self) -> str | None:
        return self.history[-1].what if self.history else None

    # ------------------------------------------------------------------ edits and refinement

    def edit(self, new_labels: np.ndarray, painted: np.ndarray | None = None,
             released: np.ndarray | None = None, *, region: tuple[int, int, int, int] | None = None,
             what: str = "paint") -> int:
        """The annotator's edits as one undo step; returns the number of pixels they set.

        ``painted`` pixels take their value in ``new_labels`` and become edited (strokes: kept
        exactly, learnt from); by default every pixel that differs from :attr:`labels`.
        ``released`` pixels (erased) become unlabelled and no longer edited, so the next
        refinement reassigns them. With ``region`` (y0, y1, x0, x1) the arrays cover only it.
        """
        height, width = self.labels.shape
        y0, y1, x0, x1 = region or (0, height, 0, width)
        labels, edited = self.labels[y0:y1, x0:x1], self.edited[y0:y1, x0:x1]
        new_labels = np.asarray(new_labels)
        if new_labels.shape != labels.shape:
            raise BadInputError(f"label map {new_labels.shape} does not match the session's {labels.shape}")
        painted = (new_labels != labels) if painted is None else np.asarray(painted, bool)
        released = np.zeros_like(painted) if released is None else np.asarray(released, bool) & ~painted
        target = np.where(painted, new_labels, np.where(released, 0, labels))
        marked = (edited | painted) & ~released
        ys, xs = np.nonzero(target != labels)
        fy, fx = np.nonzero(marked != edited)
        if not len(ys) and not len(fy):
            return 0
        changed = (ys + y0).astype(np.int64) * width + xs + x0
        flipped = (fy + y0).astype(np.int64) * width + fx + x0
        self._record(what, flipped, changed=changed, after=target[ys, xs])
        return int(np.count_nonzero(painted))

    def replace_run(self, result, class_ids: Sequence[str] | None = None, group: object = None) -> np.ndarray:
        """A new model run of the same image: its draft replaces the map (one undo step), the
        annotator's marks are cleared, its features become the refinement's."""
        self._pending, self.state = (result if getattr(result, "features", None) is not None else None), None
        ids = tuple(class_ids) if class_ids else tuple(new_class_id() for _ in result.classes)
        labels = self._push("run", result.labels, np.zeros(self.labels.shape, bool), classes=tuple(result.classes),
                            ids=ids, group=group)
        self.parameters, self.model = result.params.to_dict(), result.model
        return labels

    def _state(self) -> RefineState:
        return self.prepare()

    def propose_refinement(self, labels: np.ndarray | None = None,
                           edited: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The refined map and its grid margin, without changing the session.

        Pure but for :meth:`prepare`, so it may run on a worker thread on copies of
        :attr:`labels` and :attr:`edited`; :meth:`accept_refinement` then makes it current.
        """
        state = self._state()
        labels = self.labels.copy() if labels is None else labels
        edited = np.asarray(self.edited) if edited is None else edited
        scores = refined_scores(state, labels, edited, prior_cells=self.prior_cells, normalize=self.normalize)
        new = assign(scores, state.shape, state.stride, labels=labels, fixed=edited)
        return new, grid_margin(scores)

    def accept_refinement(self, new_labels: np.ndarray, margin: np.ndarray | None = None) -> np.ndarray:
        """Make a proposed refinement current (one undo step). Pixels the annotator set since
        the proposal was made keep their value."""
        new = np.asarray(new_labels).reshape(self.labels.shape)
        if self.edited.any():
            new = np.where(np.asarray(self.edited), self.labels, new)
        if margin is not None:
            self.margin = margin
        return self._record("refine", np.empty(0, np.int32), new_labels=new)

    def refine(self) -> np.ndarray:
        """Reassign every pixel the annotator did not set, learning from the strokes; one undo
        step. Returns the new (H, W) label map; edited pixels are unchanged."""
        return self.accept_refinement(*self.propose_refinement())

    # ------------------------------------------------------------------ classes

    def _without(self, ks: Sequence[int]) -> tuple[tuple, tuple]:
        """The class list and ids without the 0-based positions ``ks``."""
        keep = [i for i in range(len(self.classes)) if i not in set(ks)]
        return tuple(self.classes[i] for i in keep), tuple(self.class_ids[i] for i in keep)

    def add_class(self, spec: ClassSpec | str, class_id: str | None = None, group: object = None) -> int:
        """Add a class defined by example (paint it, then refine); returns its 0-based index.
        Without features it can be painted but not refined."""
        ids = (*self.class_ids, class_id or new_class_id())
        if self.can_refine:
            state = add_class(self._state(), spec)
            self._push("add class", self.labels, new_state=state, ids=ids, group=group)
        else:
            spec = spec if isinstance(spec, ClassSpec) else ClassSpec(str(spec))
            specs = as_class_specs([*self.classes, spec])
            if spec.color is None:
                specs[-1] = ClassSpec(spec.name, spec.prompts, default_color(len(specs) - 1))
            self._push("add class", self.labels, classes=tuple(specs), ids=ids, group=group)
        return len(self.classes) - 1

    def delete_classes(self, ks: Sequence[int], group: object = None) -> np.ndarray:
        """Delete classes ``ks`` (0-based) as one undo step: their pixels become unlabelled (and
        unpainted), the label values of the classes after them move down. What a class layer
        deleted in napari does; :meth:`remove_class` gives the pixels to other classes instead."""
        ks = sorted({int(k) for k in ks})
        if not ks:
            return self.labels
        gone = np.isin(self.labels, [k + 1 for k in ks])
        lut = np.zeros(max(int(self.labels.max()) + 1, len(self.classes) + 1), self.labels.dtype)
        kept = [k for k in range(1, len(self.classes) + 1) if k - 1 not in ks]
        lut[kept] = np.arange(1, len(kept) + 1)
        above = np.arange(len(self.classes) + 1, len(lut))
        lut[above] = above - len(ks)
        new = lut[self.labels]
        state = None if self.state is None else keep_classes(self.state, [k - 1 for k in kept])
        classes, ids = self._without(ks)
        return self._push("delete class", new, np.asarray(self.edited) & ~gone, state, classes=classes, ids=ids,
                          group=group)

    def remove_class(self, k: int) -> np.ndarray:
        """Remove class ``k`` (0-based); its pixels go to the best remaining class. One undo step."""
        state, new, edited = remove_class(self._state(), self.labels, np.asarray(self.edited), k,
                                          prior_cells=self.prior_cells, normalize=self.normalize)
        return self._push("remove class", new, edited, state, ids=self._without([k])[1])

    def merge_classes(self, sources: Sequence[int] | int, into: int) -> np.ndarray:
        """Merge ``sources`` into class ``into`` (0-based; pixels and strokes). One undo step."""
        state, new, _ = merge_classes(self._state(), self.labels, np.asarray(self.edited), sources, into)
        dropped = sorted({int(s) for s in np.atleast_1d(sources)} - {int(into)})
        return self._push("merge classes", new, new_state=state, ids=self._without(dropped)[1])

    def rename_class(self, k: int, name: str, color: Sequence[int] | None = None, group: object = None) -> None:
        """Rename (and recolour) class ``k`` (0-based); its pixels stay. One undo step."""
        if self.state is not None:
            self._push("rename class", self.labels, new_state=rename_class(self.state, k, name, color), group=group)
            return
        classes = list(self.classes)
        old = classes[k]
        classes[k] = ClassSpec(name, old.prompts, tuple(color) if color is not None else old.color)
        self._push("rename class", self.labels, classes=tuple(as_class_specs(classes)), group=group)


def steps_together(session: Session, planes: Iterable[Session], method: str) -> list[Session]:
    """The sessions whose last step ``method`` ("undo" or "redo") goes with ``session``'s: a
    class change made on every plane of a stack (one ``group``) is undone and redone on all.

    Raises :class:`BadInputError` (its message is the line to show) when ``session`` has no such
    step, or when another plane has later steps on top of the shared one.
    """
    steps = session.history if method == "undo" else session.future
    if not steps:
        raise BadInputError(f"nothing to {method}")
    if steps[-1].group is None:
        return [session]
    others = [s for s in planes if s is not session]
    tops = [s.history if method == "undo" else s.future for s in others]
    if not all(top and top[-1].group is steps[-1].group for top in tops):
        raise BadInputError(f"{method} the later steps of the other planes first: this class change spans them all")
    return [session, *others]

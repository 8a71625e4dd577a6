"""Class edits on a refinement state: add a class by example, remove, merge and rename.

Classes are addressed by their 0-based position in ``state.classes``; label maps follow
:mod:`maskdiffusion.core.labels` (0 = unlabelled, value k = ``classes[k - 1]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import BadInputError
from .classes import ClassSpec, as_class_specs, default_color
from .refine import RefineState, check_maps, refine

__all__ = ["add_class", "keep_classes", "merge_classes", "remove_class", "rename_class"]


def _prior_of(state: RefineState, rows) -> dict:
    """The prior and its shares (:mod:`.memory`) of the classes at positions ``rows`` of
    ``state`` (-1: a new class, which has none), as ``replace`` keywords."""
    if state.prior is None:
        return {}
    rows = np.asarray(rows, np.int64)
    prior, share = state.prior[rows], state.prior_share[rows]
    prior[rows < 0], share[rows < 0] = 0, 0
    return {"prior": prior, "prior_share": share}


def keep_classes(state: RefineState, rows: Sequence[int]) -> RefineState:
    """A state of only the classes at positions ``rows``, in that order: their attention maps,
    draft scores and memory prior (the features stay)."""
    rows = [int(k) for k in rows]
    return replace(state, attention=state.attention[rows], classes=tuple(state.classes[k] for k in rows),
                   from_text=tuple(state.from_text[k] for k in rows),
                   base=None if state.base is None else state.base[rows], **_prior_of(state, rows))


def add_class(state: RefineState, spec: ClassSpec | str) -> RefineState:
    """A state with one more class, defined only by its strokes (no attention map).

    It wins no pixel until the annotator paints it; the labels need no change.
    """
    spec = spec if isinstance(spec, ClassSpec) else ClassSpec(str(spec))
    specs = as_class_specs([*state.classes, spec])
    if spec.color is None:
        specs[-1] = ClassSpec(spec.name, spec.prompts, default_color(len(specs) - 1))
    attention = np.concatenate([state.attention, np.zeros((1, *state.grid_shape), np.float32)])
    base = None if state.base is None else np.concatenate([state.base, np.full((1, *state.grid_shape), np.nan,
                                                                               np.float32)])
    return replace(state, attention=attention, classes=tuple(specs), from_text=(*state.from_text, False), base=base,
                   **_prior_of(state, [*range(state.n_classes), -1]))


def _drop_value(labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """The label values of the classes after position ``k`` move down by one; others stay."""
    out = labels.copy()
    out[(labels > k + 1) & (labels <= n_classes)] -= 1
    return out


def remove_class(state: RefineState, labels: np.ndarray, edited: np.ndarray, k: int, **options):
    """Remove class ``k``: its pixels (painted ones included) go to the best remaining class.

    Other pixels keep their class (label values above ``k + 1`` move down by one). ``options`` go to
    :func:`refine`. Returns (state, labels, edited).
    """
    labels, edited = check_maps(state, labels, edited)
    K = state.n_classes
    if not 0 <= k < K:
        raise IndexError(f"class index {k} out of range 0-{K - 1}")
    if K == 1:
        raise BadInputError("cannot remove the only class")
    mine = labels == k + 1
    new_state = keep_classes(state, [i for i in range(K) if i != k])
    new_edited = edited & ~mine
    out = refine(new_state, _drop_value(labels, k, K), new_edited, keep=~mine, **options)
    return new_state, out, new_edited


def merge_classes(state: RefineState, labels: np.ndarray, edited: np.ndarray, sources: Sequence[int] | int,
                  into: int):
    """Merge classes ``sources`` into class ``into``: their pixels and strokes become ``into``'s.

    The merged class's map is the pixel-wise maximum of the maps (still max-normalised) and
    its prompts the union of theirs; it keeps its name and colour. Returns (state, labels, edited).
    """
    labels, edited = check_maps(state, labels, edited)
    K = state.n_classes
    sources = sorted({int(s) for s in np.atleast_1d(sources)} - {int(into)})
    if not all(0 <= s < K for s in (*sources, into)):
        raise IndexError(f"class indices must be in 0-{K - 1}")
    if not sources:
        return state, labels.copy(), edited.copy()
    out = np.where(np.isin(labels, [s + 1 for s in sources]), into + 1, labels).astype(labels.dtype)
    attention = state.attention.copy()
    attention[into] = attention[[into, *sources]].max(0)
    base = None if state.base is None else state.base.copy()
    if base is not None:
        base[into] = np.fmax.reduce(base[[into, *sources]], axis=0)
    target = state.classes[into]
    prompts = tuple(dict.fromkeys(p for i in (into, *sources) if state.from_text[i] for p in state.classes[i].prompts))
    classes = list(state.classes)
    classes[into] = ClassSpec(target.name, prompts or target.prompts, target.color)
    from_text = list(state.from_text)
    from_text[into] = any(state.from_text[i] for i in (into, *sources))
    for s in reversed(sources):
        out = _drop_value(out, s, len(classes))
        attention = np.delete(attention, s, 0)
        base = None if base is None else np.delete(base, s, 0)
        del classes[s], from_text[s]
    merged = replace(state, attention=attention, classes=tuple(classes), from_text=tuple(from_text), base=base,
                     **_prior_of(state, [i for i in range(K) if i not in sources]))
    return merged, out, edited.copy()


def rename_class(state: RefineState, k: int, name: str, color: Sequence[int] | None = None) -> RefineState:
    """A state where class ``k`` has a new name (and colour); its pixels stay as they are."""
    old = state.classes[k]
    classes = list(state.classes)
    classes[k] = ClassSpec(name, old.prompts, tuple(color) if color is not None else old.color)
    return replace(state, classes=tuple(as_class_specs(classes)))

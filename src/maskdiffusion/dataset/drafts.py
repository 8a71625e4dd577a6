"""What the annotator needs to work on one image of a project: its pixels, labels to start
from, and refinement's state.

:func:`draft` takes, best first: the labels the annotator saved (with their strokes), a draft
the project made before, a draft ``maskdiffusion batch`` wrote into the output folder with the
project's classes and settings, or a new model run (yielding progress per tile, stoppable
between tiles), which it keeps in ``drafts/`` for next time. A stored draft is brought up to
date with what corrected images have taught since it was made (``docs/algorithm.md`` §4.7)
without a model call, when its refinement state was saved with it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from ..core.classes import ClassSpec
from ..core.memory import ClassMemory, apply_memory
from ..core.refine import RefineState, assign, refined_scores
from ..core.result import Progress
from ..geo.raster_io import GeoInfo
from .project import DRAFTS, Project, Status, read_marks, relative_path

__all__ = ["FULL_FEATURES_BYTES", "Draft", "draft"]

#: A draft keeps every feature channel when they take at most this (a 1700² image of SD 1.x),
#: so that what it teaches the class memory is exact; larger images keep a reduction (§4.6).
FULL_FEATURES_BYTES = 64 << 20


@dataclass
class Draft:
    """One image of a project, ready to correct.

    index: its position in the project. image, geo, valid: its pixels as read (bands last),
    georeference, and the pixels that hold data (``None``: all). labels: (H, W) label map in
    the project's values (0 = unlabelled, k = ``classes[k - 1]``). classes: the project's.
    state: what Refine needs (``None`` when no features of it exist: a batch draft saved
    without ``--save-refine``). edited: the pixels the annotator set, for saved labels.
    source: ``"labels"`` (the annotator's), ``"draft"`` (the project's), ``"batch"`` or ``"model"``.
    """

    index: int
    image: np.ndarray
    geo: GeoInfo
    valid: np.ndarray | None
    labels: np.ndarray
    classes: tuple[ClassSpec, ...]
    state: RefineState | None
    edited: np.ndarray | None
    source: str

    def session(self):
        """A :class:`~maskdiffusion.session.Session` on this draft (strokes, refine, undo)."""
        from ..session import Session

        edited = np.zeros(self.labels.shape, bool) if self.edited is None else self.edited
        return Session(self.labels, edited, self.state, {"path": str(self.geo.source), "plane": None},
                       class_list=tuple(self.classes))


def _labels_of(state: RefineState, valid: np.ndarray | None) -> np.ndarray:
    labels = assign(refined_scores(state), state.shape, state.stride)
    if valid is not None:
        labels[~valid] = 0
    return labels


def _prior_rows(state: RefineState, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The shares and prototypes of ``state``'s prior for ``n`` classes (zero where none)."""
    share, prior = np.zeros(n, np.float32), np.zeros((n, len(state.features)), np.float32)
    if state.prior is not None:
        share[:state.n_classes] = state.prior_share
        prior[:state.n_classes] = state.prior * (state.prior_share > 0)[:, None]
    return share, prior


def _up_to_date(state: RefineState, memory: ClassMemory | None, classes) -> tuple[RefineState, bool]:
    """``state`` with the memory as it is now and the project's classes, and whether that
    changes its draft (a prior other than the one it was made with)."""
    target = apply_memory(state, memory, classes, rescore=True)
    before, after = _prior_rows(state, target.n_classes), _prior_rows(target, target.n_classes)
    return target, not all(np.array_equal(a, b) for a, b in zip(before, after))


def draft(project: Project, index: int, model=None, *, device: str | None = None,
          dtype: str | None = None) -> Generator[Progress, None, Draft]:
    """Get image ``index`` ready to correct: a generator of :class:`Progress` returning a :class:`Draft`.

    Parameters
    ----------
    project : Project
    index : int
    model : SDModel or str, optional
        Used only when no stored draft exists (default: the project's model, loaded once and
        cached). A stored draft needs no model at all.
    device, dtype : str, optional
        Default: the project's.

    Returns
    -------
    Draft. A new model run is stored in ``drafts/`` and the image marked drafted. Closing the
    generator stops the run between tiles and stores nothing. An image that cannot be read or
    segmented (a band it lacks, say) is marked failed with the reason, and the error raised
    (:class:`~maskdiffusion.errors.BadInputError`).

    Examples
    --------
    >>> from maskdiffusion.engine import drain                                # doctest: +SKIP
    >>> ready = drain(draft(project, project.next_todo()), print)            # doctest: +SKIP
    >>> session = ready.session()                                            # doctest: +SKIP
    """
    from ..batch.tasks import one_line
    from ..errors import BadInputError
    from ..geo.raster_io import read_image, read_input

    entry = project.entry(index)
    yield Progress(0, 1, "load", f"reading {entry.path.name}")
    try:
        image, geo, valid = read_input(entry.path)
    except BadInputError as e:
        project.mark(index, Status.FAILED, one_line(e))
        raise
    classes = project.classes
    memory = project.memory_snapshot()
    if entry.labels is not None and entry.labels.is_file():
        labels = read_image(entry.labels)[0]
        state = project.stored_state(index)
        state = None if state is None or state.shape != labels.shape else apply_memory(state, memory, classes)
        edited = read_marks(entry.labels.with_suffix(".edited.npz"))
        return Draft(index, image, geo, valid, labels, classes, state, edited, "labels")
    found = project.stored_draft(index)
    if found is not None:
        path, source = found
        labels, state = read_image(path)[0], project.stored_state(index)
        if state is not None and state.shape == labels.shape:
            state, changed = _up_to_date(state, memory, classes)
            if changed:
                labels = _labels_of(state, valid)
        else:
            state = None
        return Draft(index, image, geo, valid, labels, classes, state, None, source)
    try:
        result = yield from _segment(project, image, valid, model, memory, device, dtype)
    except BadInputError as e:
        project.mark(index, Status.FAILED, one_line(e))
        raise
    dims = None if result.features.nbytes <= FULL_FEATURES_BYTES else "auto"
    state = apply_memory(RefineState.from_result(result, dims=dims), memory, classes, rescore=False)
    labels = result.labels if state.n_classes == len(result.classes) else _labels_of(state, valid)
    _store(project, index, labels, state, geo, dict(result.metadata(), georeference=geo.to_dict()))
    return Draft(index, image, geo, valid, labels, classes, state, None, "model")


def _segment(project: Project, image, valid, model, memory, device, dtype):
    from ..engine import iter_segment

    return (yield from iter_segment(image, list(project.text_classes), model or project.model, project.params,
                                    device=device or project.device, dtype=dtype or project.dtype,
                                    keep_features=True, valid=valid, return_confidence=False,
                                    prototype_memory=memory))


def _store(project: Project, index: int, labels, state: RefineState, geo: GeoInfo, metadata: dict) -> None:
    """Keep a new draft in ``drafts/``: labels, sidecar and refinement state, committed together."""
    from ..core.labels import label_values
    from ..geo.atomic import StagedOutputs
    from ..geo.raster_io import write_labels, write_sidecar
    from ..geo.refine_file import refine_path, write_refine_state

    path = project.draft_path(index)
    (project.folder / DRAFTS).mkdir(exist_ok=True)
    metadata = dict(metadata, image=relative_path(project.entry(index).path, path.parent),
                    classes=[dict(c.to_dict(), value=k) for k, c in enumerate(state.classes, 1)],
                    label_values=label_values(state.classes))
    with StagedOutputs():
        write_labels(path, labels, state.classes, geo, metadata)
        write_refine_state(refine_path(path), state, metadata)
        write_sidecar(path, metadata)
    project._set_drafted(index)

"""A segmentation corrected by a raster of strokes (``maskdiffusion segment --scribbles``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..errors import BadInputError
from .class_edits import add_class
from .classes import ClassSpec
from .labels import label_dtype
from .refine import PRIOR_CELLS, RefineState, refine
from .result import SegmentationResult

__all__ = ["apply_scribbles"]


def apply_scribbles(result: SegmentationResult, scribbles: np.ndarray, *, new_classes: Sequence[ClassSpec | str] = (),
                    dims: int | str | None = None, prior_cells: float = PRIOR_CELLS,
                    normalize: bool = False) -> SegmentationResult:
    """A result corrected by a scribble raster: 0 = no stroke, k = class k (a label map).

    Values past the result's K classes are the example-only ``new_classes`` in order. The
    scribbled pixels keep their class; every other pixel is reassigned (:func:`refine`). The
    result needs its features (``keep_features=True``). Returns a new result whose
    confidence is the refined margin (0 on scribbled pixels).
    """
    scribbles = np.asarray(scribbles)
    if scribbles.shape != result.labels.shape:
        raise BadInputError(f"scribbles {scribbles.shape} must have the image's shape {result.labels.shape}")
    if scribbles.dtype.kind not in "iub":
        raise BadInputError(f"scribbles must be an integer label raster, got {scribbles.dtype}")
    state = RefineState.from_result(result, dims=dims)
    for spec in new_classes:
        state = add_class(state, spec)
    K = state.n_classes
    top = int(scribbles.max()) if scribbles.size else 0
    if top > K or (scribbles.size and int(scribbles.min()) < 0):
        raise BadInputError(f"scribble values must be 0 (no stroke) or 1-{K} (a class), found {top}")
    edited = scribbles > 0
    labels = np.where(edited, scribbles, result.labels).astype(label_dtype(K))
    labels, margin = refine(state, labels, edited, prior_cells=prior_cells, normalize=normalize, confidence=True)
    return replace(result, labels=labels, confidence=margin, classes=list(state.classes), scores=None)

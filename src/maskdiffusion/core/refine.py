"""Refinement from the annotator's strokes, without another model call (``docs/algorithm.md`` §4).

MaskDiffusion's last step is cheap: class prototypes from features, then an argmax of scores.
After one model run, :class:`RefineState` keeps what that step needs: the unit features f̂ and
the class attention maps on the coarse grid (one cell = ``stride`` input pixels), reduced by
:mod:`.reduction`. Every later step works on it alone:

- :func:`class_prototypes` mixes each class's attention prototype with the features under the
  annotator's strokes of that class (the weighting is documented there);
- :func:`assign` turns grid scores into pixel labels band by band (bilinear scores, argmax), the
  way the engine does, keeping the pixels the annotator set exactly as set;
- :func:`refine` is both; :func:`apply_scribbles` runs it on a :class:`SegmentationResult`.
  Class edits live in :mod:`.class_edits`, confidence in :mod:`.confidence`.

**Anchored on the draft.** The run may have used per-tile prototypes (the paper's default), so
image-wide prototypes would not give back its draft. The state keeps the run's own scores on
the grid (``base``) and a class scores ``base_k + ⟨f̂, c_k − c_k⁰⟩``, where c_k⁰ is its
attention-only prototype: without strokes refinement returns the draft, and strokes move each
class by exactly what they change in its prototype.

**Label maps** follow :mod:`maskdiffusion.core.labels`: 0 = unlabelled, value k =
``classes[k - 1]``; values above K are no class either. Such pixels, when edited, are kept
and teach nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import BadInputError
from .classes import ClassSpec
from .labels import label_dtype
from .prototypes import prototype_sums
from .reduction import MIN_AGREEMENT, chunks, flat_cells, reduce_features, to_torch

if TYPE_CHECKING:
    from .result import SegmentationResult

__all__ = [
    "FAR",
    "PRIOR_CELLS",
    "RefineState",
    "assign",
    "check_maps",
    "class_prototypes",
    "cover_fractions",
    "grid_scores",
    "refine",
    "refined_scores",
    "stroke_weights",
]

#: Stroke-covered grid cells that weigh as much as a class's whole attention map (see
#: :func:`class_prototypes`): one brush stroke of ~2000 px (8 cells of 16×16 px) halves the
#: attention's say.
PRIOR_CELLS = 8.0
#: The score of a class that has no prototype yet (an example-only class before its strokes).
FAR = -1e30


@dataclass(frozen=True, eq=False)
class RefineState:
    """What refinement needs from one model run over one image.

    features: (D, gh, gw) reduced unit features (float16 by default), see :func:`reduce_features`.
    attention: (K, gh, gw) float32 max-normalised class maps; zero for example-only classes.
    classes: the K classes; ``from_text[k]`` is False for a class defined only by strokes.
    shape: (H, W) of the label maps; ``stride``: input pixels per grid cell.
    reduction: how the features were reduced (method, dims, source dims, measured agreement).
    features_id: names the feature array (sessions skip rewriting an unchanged one).
    base: (K, gh, gw) float32 scores of the run on the grid (NaN rows for classes added later),
        or None to score with image-wide prototypes alone.
    basis: (C, D) float32 projection of f̂ onto ``features`` (None: ``features`` are f̂ itself),
        which carries features between the model's space and the state's (:mod:`.memory`).
    prior, prior_share: (K, D) float32 prototypes learnt from earlier images of a dataset and
        the share a_k (K,) each takes of its class's prototype (:mod:`.memory`), or None.
    """

    features: np.ndarray
    attention: np.ndarray
    classes: tuple[ClassSpec, ...]
    shape: tuple[int, int]
    stride: float
    from_text: tuple[bool, ...]
    reduction: dict = field(default_factory=dict)
    features_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    base: np.ndarray | None = None
    basis: np.ndarray | None = None
    prior: np.ndarray | None = None
    prior_share: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "from_text", tuple(bool(t) for t in self.from_text))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.features.ndim != 3 or self.attention.ndim != 3:
            raise BadInputError("features and attention must be (channels, gh, gw) arrays")
        if self.features.shape[1:] != self.attention.shape[1:]:
            raise BadInputError(f"features grid {self.features.shape[1:]} differs from attention grid "
                             f"{self.attention.shape[1:]}")
        if not len(self.classes) == len(self.attention) == len(self.from_text):
            raise BadInputError(f"{len(self.classes)} classes but {len(self.attention)} attention maps")
        if self.base is not None and self.base.shape != self.attention.shape:
            raise BadInputError(f"draft scores {self.base.shape} differ from the attention maps {self.attention.shape}")
        if (self.prior is None) != (self.prior_share is None) or (
                self.prior is not None and (self.prior.shape != (len(self.classes), len(self.features))
                                            or self.prior_share.shape != (len(self.classes),))):
            raise BadInputError("a prior needs one prototype of the features' dimension and one share per class")

    @classmethod
    def from_result(cls, result: SegmentationResult, dims: int | str | None = "auto", dtype=np.float16,
                    min_agreement: float = MIN_AGREEMENT, seed: int = 0) -> RefineState:
        """The state of a run made with ``keep_features=True``.

        ``dims``: ``"auto"`` (see the module), an int D, or ``None`` to keep every channel.
        """
        if result.features is None:
            raise BadInputError("the result has no features: segment with keep_features=True to refine it")
        attention = np.asarray(result.attention, np.float32)
        feats, info, basis = reduce_features(result.features, dims, attention, dtype=dtype,
                                             min_agreement=min_agreement, seed=seed, return_basis=True)
        base = getattr(result, "grid_scores", None)
        if base is not None and base.shape != attention.shape:
            base = None
        return cls(feats, attention, tuple(result.classes), result.labels.shape, float(result.attention_stride),
                   (True,) * len(result.classes), info, base=None if base is None else np.asarray(base, np.float32),
                   basis=basis)

    @cached_property
    def attention_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, D) Σ_p A_k(p) f(p) and (K,) Σ_p A_k(p): fixed for a state, computed once."""
        num, den = prototype_sums(self.attention, self.features)
        return num.numpy(), den.numpy()

    @cached_property
    def drafted(self) -> np.ndarray:
        """(K,) bool: the classes that have the run's own scores in ``base``."""
        if self.base is None:
            return np.zeros(self.n_classes, bool)
        return np.isfinite(self.base.reshape(self.n_classes, -1)).all(1)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays the state holds (the refinement cache)."""
        return tuple(a for a in (self.features, self.attention, self.base, self.basis, self.prior) if a is not None)

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the refinement cache)."""
        return int(sum(a.nbytes for a in self.arrays))

    def class_index(self, name: str) -> int:
        """Index of the class called ``name`` (case-insensitive)."""
        for i, c in enumerate(self.classes):
            if c.name.lower() == str(name).lower():
                return i
        raise KeyError(f"no class named {name!r}; classes are {', '.join(c.name for c in self.classes)}")



# --------------------------------------------------------------------------- prototypes and scores


def _cell_index(coords: np.ndarray, n_cells: int, stride: float) -> np.ndarray:
    return np.minimum((coords / stride).astype(np.int64), n_cells - 1)


def stroke_weights(labels: np.ndarray, edited: np.ndarray, n_classes: int, grid_shape: tuple[int, int],
                   stride: float) -> np.ndarray:
    """(K, gh, gw) float32: the fraction of each grid cell covered by strokes of each class.

    A stroke pixel is an ``edited`` pixel whose label is a class (1..K); a full cell counts 1.
    """
    gh, gw = grid_shape
    ys, xs = np.nonzero(edited)
    values = labels[ys, xs].astype(np.int64) - 1
    ok = (values >= 0) & (values < n_classes)
    ys, xs, values = ys[ok], xs[ok], values[ok]
    cell = _cell_index(ys, gh, stride) * gw + _cell_index(xs, gw, stride)
    counts = np.bincount(values * (gh * gw) + cell, minlength=n_classes * gh * gw)
    return (counts / float(stride) ** 2).astype(np.float32).reshape(n_classes, gh, gw)


def cover_fractions(labels: np.ndarray, n_classes: int, grid_shape: tuple[int, int], stride: float,
                    rows: int = 512) -> np.ndarray:
    """(K, gh, gw) float32: the fraction of each grid cell whose label is each class (1..K).

    :func:`stroke_weights` of a map where every pixel counts, read a band of ``rows`` at a time
    (a 6000² map costs no index arrays of its size); a full cell counts 1.
    """
    gh, gw = grid_shape
    labels = np.asarray(labels)
    col = _cell_index(np.arange(labels.shape[1]), gw, stride)
    counts = np.zeros(n_classes * gh * gw, np.int64)
    for y in range(0, labels.shape[0], rows):
        band = labels[y:y + rows].astype(np.int64)
        cell = _cell_index(np.arange(y, y + len(band)), gh, stride)[:, None] * gw + col
        ok = (band >= 1) & (band <= n_classes)
        counts += np.bincount((band[ok] - 1) * (gh * gw) + cell[ok], minlength=len(counts))
    return (counts / float(stride) ** 2).astype(np.float32).reshape(n_classes, gh, gw)


def class_prototypes(state: RefineState, weights: np.ndarray | None = None, prior_cells: float = PRIOR_CELLS,
                     normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class prototypes from the attention maps and the annotator's strokes.

    With A_k the class map, w_k the stroke cover of :func:`stroke_weights` and n_k = Σ w_k::

        c_k = (Σ_p A_k(p) f̂(p) + λ_k Σ_p w_k(p) f̂(p)) / (Σ_p A_k(p) + λ_k n_k),
        λ_k = Σ_p A_k(p) / prior_cells

    so the strokes' mean feature takes the share n_k / (n_k + prior_cells) of the prototype:
    without strokes c_k is the paper's prototype; a stroke covering ``prior_cells`` cells
    halves the attention's say; many strokes outweigh it. A class without attention (defined
    by example) is the mean feature under its strokes. With a ``state.prior`` (what earlier
    images of a dataset taught, :mod:`.memory`) the attention prototype is first mixed with it,
    (1 − a_k)·c_k^att + a_k·prior_k, and a class known only from it has the prior as its
    prototype. ``normalize`` scales each prototype to unit length (cosine scores) instead of
    the paper's plain inner product.

    Returns (K, D) float32 prototypes and the (K,) bool mask of classes that have one (an
    example-only class before its first stroke has none).
    """
    K = state.n_classes
    attn_sum, mass = state.attention_sums
    cells_total = state.grid_shape[0] * state.grid_shape[1]
    w = np.zeros((K, cells_total), np.float32) if weights is None else weights.reshape(K, -1).astype(np.float32)
    touched = np.flatnonzero(w.any(0))
    stroke_sum = prototype_sums(w[:, touched], flat_cells(state.features)[:, touched])[0].numpy()
    n = w.sum(1)
    text = np.asarray(state.from_text) & (mass > 0)
    attn_mean = attn_sum / np.maximum(mass, 1e-12)[:, None]
    if state.prior is not None:
        a = state.prior_share[:, None]
        attn_mean = np.where(text[:, None], (1 - a) * attn_mean + a * state.prior, state.prior)
        text = text | (state.prior_share > 0)
    share = np.where(text, n / (n + prior_cells), 1.0)[:, None]
    stroke_mean = stroke_sum / np.maximum(n, 1e-12)[:, None]
    protos = np.where(n[:, None] > 0, (1 - share) * attn_mean + share * stroke_mean, attn_mean)
    active = text | (n > 0)
    if normalize:
        protos = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return np.where(active[:, None], protos, 0).astype(np.float32), active


def grid_scores(state: RefineState, protos: np.ndarray, active: np.ndarray | None = None, *,
                anchored: bool = False, normalize: bool = False) -> np.ndarray:
    """(K, gh, gw) float32 scores ⟨f̂, c_k⟩ on the grid; classes without a prototype score -1e30.

    ``anchored``: a class with the run's own scores scores ``base_k + ⟨f̂, c_k − c_k⁰⟩`` (c_k⁰ its
    attention-only prototype), exactly the run's scores until strokes move its prototype;
    ``normalize`` must match the prototypes'.
    """
    drafted = state.drafted if anchored else np.zeros(len(protos), bool)
    if drafted.any():
        protos = np.where(drafted[:, None], protos - class_prototypes(state, None, normalize=normalize)[0], protos)
    feats = flat_cells(state.features)
    out = np.empty((len(protos), feats.shape[1]), np.float32)
    p = to_torch(protos)
    for s in chunks(feats.shape[1]):
        out[:, s] = (p @ to_torch(feats[:, s])).numpy()
    out = out.reshape(len(protos), *state.grid_shape)
    for k in np.flatnonzero(drafted):
        out[k] += state.base[k]
    if active is not None:
        out[~np.asarray(active)] = FAR
    return out


def _axis_weights(n_pixels: int, n_cells: int, stride: float):
    """Bilinear sources along one axis, as ``align_corners=False``: (i0, i1, weight of i1)."""
    g = np.clip((np.arange(n_pixels) + 0.5) / stride - 0.5, 0, n_cells - 1)
    i0 = np.floor(g).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_cells - 1), (g - i0).astype(np.float32)


def _out_dtype(n_classes: int, like: np.ndarray | None):
    """The label dtype for K classes, widened to that of the labels kept (if any)."""
    return label_dtype(n_classes) if like is None else np.result_type(label_dtype(n_classes), like.dtype)


def _uniform_quads(winner: np.ndarray) -> np.ndarray:
    """(gh, gw) bool: the cells (a, b), (a+1, b), (a, b+1), (a+1, b+1) (clamped) share a winner."""
    w = np.pad(winner, ((0, 1), (0, 1)), mode="edge")
    c = w[:-1, :-1]
    return (c == w[1:, :-1]) & (c == w[:-1, 1:]) & (c == w[1:, 1:])


def _first_best(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(0)`` for finite scores (the first best on ties), one class at a time:
    over a few classes, contiguous comparisons beat numpy's argmax along a leading axis (1.7×)."""
    best = np.zeros(scores.shape[1:], np.intp)
    top = scores[0].copy()
    for k in range(1, len(scores)):
        higher = scores[k] > top
        best[higher] = k
        np.maximum(top, scores[k], out=top)
    return best


def assign(scores: np.ndarray, shape: tuple[int, int], stride: float, *, labels: np.ndarray | None = None,
           fixed: np.ndarray | None = None, confidence: bool = False):
    """Label map (1..K) from (K, gh, gw) grid scores: bilinear scores (align_corners=False), argmax.

    The engine's assignment, one band of rows between two grid rows at a time. A pixel whose
    four surrounding cells share their best class takes it without interpolation: a convex
    mix of scores that all rank class k first ranks it first too. The other pixels get the
    bilinear scores and their argmax. Pixels where ``fixed`` is True keep their value in
    ``labels``. With ``confidence``, also returns the (H, W) float32 margin between the two
    best scores (1 with a single class; 0 on fixed pixels, whose class the scores do not
    decide); it needs the scores of every pixel and costs about twice as much.

    Plain numpy, single-threaded: small per-band operations gain nothing from threads and
    lose much on a busy machine.
    """
    H, W = shape
    K, gh, gw = scores.shape
    if fixed is not None and labels is None:
        raise BadInputError("fixed pixels need the labels they keep")
    out = np.empty((H, W), _out_dtype(K, labels))
    margin = np.empty((H, W), np.float32) if confidence else None
    g = np.ascontiguousarray(scores, np.float32)
    x0, x1, wx = _axis_weights(W, gw, stride)
    y0, _, wy = _axis_weights(H, gh, stride)
    left = g[:, :, x0]
    rows = left + (g[:, :, x1] - left) * wx
    winner = g.argmax(0)
    plain = _uniform_quads(winner)[:, x0]
    winner = (winner[:, x0] + 1).astype(out.dtype)
    starts = np.searchsorted(y0, np.arange(gh + 1))
    every = np.arange(W)
    for q in range(gh):
        r0, r1 = int(starts[q]), int(starts[q + 1])
        if r0 == r1:
            continue
        band = out[r0:r1]
        band[:] = winner[q]
        cols = every if confidence else np.flatnonzero(~plain[q])
        if len(cols):
            a = rows[:, q, cols]
            s = a[:, None] + (rows[:, min(q + 1, gh - 1), cols] - a)[:, None] * wy[r0:r1, None]
            best = _first_best(s)
            band[:, cols] = best + 1
            if confidence:
                if K > 1:
                    top = np.take_along_axis(s, best[None], 0)[0]
                    np.put_along_axis(s, best[None], -np.inf, 0)
                    margin[r0:r1] = top - s.max(0)
                else:
                    margin[r0:r1] = 1.0
        if fixed is not None:
            keep = fixed[r0:r1]
            if keep.any():
                np.copyto(band, labels[r0:r1], where=keep)
                if confidence:
                    margin[r0:r1][keep] = 0.0
    return (out, margin) if confidence else out


def refine(state: RefineState, labels: np.ndarray, edited: np.ndarray, *, prior_cells: float = PRIOR_CELLS,
           normalize: bool = False, confidence: bool = False, keep: np.ndarray | None = None):
    """Reassign every pixel the annotator did not set, from prototypes that learn from the strokes.

    Parameters
    ----------
    state : RefineState
    labels : (H, W) int array
        The current label map (0 = unlabelled, k = class k; other values are no class).
    edited : (H, W) bool
        Pixels the annotator set: they keep their value bit for bit, and those holding a class
        are that class's strokes (see :func:`class_prototypes` for the weighting).
    keep : (H, W) bool, optional
        More pixels to keep without learning from them.
    confidence : bool
        Also return the margin between the two best scores (see :func:`assign`).

    Returns
    -------
    labels : (H, W) array of ``labels``' dtype, and the margin when ``confidence``.

    Examples
    --------
    >>> import numpy as np
    >>> from maskdiffusion import segment
    >>> image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    >>> result = segment(image, "road,tree", "random:tiny", tile_size=128, keep_features=True)
    >>> state = RefineState.from_result(result)
    >>> strokes = result.labels.copy(); strokes[:20, :20] = 2
    >>> edited = np.zeros(strokes.shape, bool); edited[:20, :20] = True
    >>> labels = refine(state, strokes, edited)
    >>> bool((labels[:20, :20] == 2).all()), labels.shape
    (True, (128, 128))
    """
    labels, edited = check_maps(state, labels, edited)
    scores = refined_scores(state, labels, edited, prior_cells=prior_cells, normalize=normalize)
    fixed = edited if keep is None else edited | keep
    return assign(scores, state.shape, state.stride, labels=labels, fixed=fixed, confidence=confidence)


def refined_scores(state: RefineState, labels: np.ndarray | None = None, edited: np.ndarray | None = None, *,
                   prior_cells: float = PRIOR_CELLS, normalize: bool = False) -> np.ndarray:
    """(K, gh, gw) grid scores after learning from the strokes in ``labels``/``edited``
    (none given: the draft's), anchored on the run's own scores."""
    weights = None if edited is None else stroke_weights(labels, edited, state.n_classes, state.grid_shape,
                                                         state.stride)
    protos, active = class_prototypes(state, weights, prior_cells, normalize)
    return grid_scores(state, protos, active, anchored=True, normalize=normalize)


def check_maps(state: RefineState, labels, edited):
    labels, edited = np.asarray(labels), np.asarray(edited, bool)
    if labels.shape != state.shape or edited.shape != state.shape:
        raise BadInputError(f"labels {labels.shape} and edited mask {edited.shape} must have the image's shape "
                         f"{state.shape}")
    if labels.dtype.kind not in "iu":
        raise BadInputError(f"labels must be integers, got {labels.dtype}")
    return labels, edited

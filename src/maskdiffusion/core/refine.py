"""Refinement from the annotator's strokes, without another model call (issue 5).

MaskDiffusion's last step is cheap: class prototypes from features, then an argmax of scores.
After one model run, :class:`RefineState` keeps what that step needs: the unit features f̂ and
the class attention maps on the coarse grid (one cell = ``stride`` input pixels). Every later
step works on it alone:

- :func:`class_prototypes` mixes each class's attention prototype with the features under the
  annotator's strokes of that class (the weighting is documented there);
- :func:`assign` turns grid scores into pixel labels band by band (bilinear scores, argmax), the
  way the engine does, keeping the pixels the annotator set exactly as set;
- :func:`refine` is both; :func:`apply_scribbles` runs it on a :class:`SegmentationResult`.

**Anchored on the draft.** The run may have used per-tile prototypes (the paper's default), so
image-wide prototypes would not give back its draft. The state keeps the run's own scores on
the grid (``base``) and a class scores ``base_k + ⟨f̂, c_k − c_k⁰⟩``, where c_k⁰ is its
attention-only prototype: without strokes refinement returns the draft, and strokes move each
class by exactly what they change in its prototype.

**Feature reduction.** f̂ has C = 2880 channels for SD 1.x: a 6000×6000 tile (375×375 grid)
takes 810 MB in float16. :func:`reduce_features` projects f̂ on its first D uncentred principal
directions (fitted on a sample of cells) and stores them in float16. Scores are inner products
and prototypes are linear in f̂, so the reduced scores are those of f̂ projected on that
subspace. ``dims="auto"`` (the default) takes the smallest D of 16, 32, 64, 128, 256, 512 at
which the draft assignment of the sampled cells agrees with the full features on at least
``min_agreement`` (99.5 %), else keeps all channels; D = 256 makes a 6000² tile 72 MB.

**Label maps** are class-index arrays as the engine returns them: value i is ``classes[i]``, any
value outside ``0..K-1`` (such as :data:`NO_CLASS`) is no class. Such pixels, when edited, are
kept and teach nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .classes import ClassSpec, as_class_specs, default_color

if TYPE_CHECKING:
    from .result import SegmentationResult

__all__ = [
    "NO_CLASS",
    "PRIOR_CELLS",
    "DIMS_LADDER",
    "MIN_AGREEMENT",
    "MAX_BYTES",
    "RefineState",
    "reduce_features",
    "stroke_weights",
    "class_prototypes",
    "grid_scores",
    "refined_scores",
    "assign",
    "refine",
    "apply_scribbles",
    "add_class",
    "remove_class",
    "merge_classes",
    "rename_class",
    "grid_margin",
    "next_unsure_region",
]

#: The "no class" value of the int16 label maps of the annotator and of sessions.
NO_CLASS = -1
#: Stroke-covered grid cells that weigh as much as a class's whole attention map (see
#: :func:`class_prototypes`): one brush stroke of ~2000 px (8 cells of 16×16 px) halves the
#: attention's say.
PRIOR_CELLS = 8.0
#: Candidate feature dimensions of ``dims="auto"``.
DIMS_LADDER = (16, 32, 64, 128, 256, 512)
#: Agreement with the full features that ``dims="auto"`` asks of the draft assignment.
MIN_AGREEMENT = 0.995
#: Memory a :class:`RefineState` may take (the issue's goal for a 6000×6000 tile).
MAX_BYTES = 1 << 30

_CHUNK = 16384
_FAR = -1e30


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

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "from_text", tuple(bool(t) for t in self.from_text))
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        if self.features.ndim != 3 or self.attention.ndim != 3:
            raise ValueError("features and attention must be (channels, gh, gw) arrays")
        if self.features.shape[1:] != self.attention.shape[1:]:
            raise ValueError(f"features grid {self.features.shape[1:]} differs from attention grid "
                             f"{self.attention.shape[1:]}")
        if not len(self.classes) == len(self.attention) == len(self.from_text):
            raise ValueError(f"{len(self.classes)} classes but {len(self.attention)} attention maps")
        if self.base is not None and self.base.shape != self.attention.shape:
            raise ValueError(f"draft scores {self.base.shape} differ from the attention maps {self.attention.shape}")

    @classmethod
    def from_result(cls, result: SegmentationResult, dims: int | str | None = "auto", dtype=np.float16,
                    min_agreement: float = MIN_AGREEMENT, seed: int = 0) -> RefineState:
        """The state of a run made with ``keep_features=True``.

        ``dims``: ``"auto"`` (see the module), an int D, or ``None`` to keep every channel.
        """
        if result.features is None:
            raise ValueError("the result has no features: segment with keep_features=True to refine it")
        attention = np.asarray(result.attention, np.float32)
        feats, info = reduce_features(result.features, dims, attention, dtype=dtype, min_agreement=min_agreement,
                                      seed=seed)
        base = getattr(result, "grid_scores", None)
        if base is not None and base.shape != attention.shape:
            base = None
        return cls(feats, attention, tuple(result.classes), result.labels.shape, float(result.attention_stride),
                   (True,) * len(result.classes), info, base=None if base is None else np.asarray(base, np.float32))

    @cached_property
    def attention_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(K, D) Σ_p A_k(p) f(p) and (K,) Σ_p A_k(p): fixed for a state, computed once."""
        a = self.attention.reshape(self.n_classes, -1).astype(np.float32)
        feats = _cells(self.features)
        num = torch.zeros(len(a), feats.shape[0])
        for s in _chunks(feats.shape[1]):
            num += _as_torch(a[:, s]) @ _as_torch(feats[:, s]).T
        return num.numpy(), a.sum(1)

    def anchor(self, normalize: bool = False) -> np.ndarray | None:
        """(K, gh, gw) ``base - ⟨f̂, c⁰⟩`` (0 where a class has no draft score), computed once."""
        if self.base is None:
            return None
        cache = self.__dict__.setdefault("_anchors", {})
        if normalize not in cache:
            protos, _ = class_prototypes(self, None, normalize=normalize)
            cache[normalize] = np.nan_to_num(self.base - grid_scores(self, protos), nan=0.0)
        return cache[normalize]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def grid_shape(self) -> tuple[int, int]:
        return tuple(self.features.shape[1:])

    @property
    def nbytes(self) -> int:
        """Memory held by the arrays (the refinement cache)."""
        return int(self.features.nbytes + self.attention.nbytes + (0 if self.base is None else self.base.nbytes))

    def class_index(self, name: str) -> int:
        """Index of the class called ``name`` (case-insensitive)."""
        for i, c in enumerate(self.classes):
            if c.name.lower() == str(name).lower():
                return i
        raise KeyError(f"no class named {name!r}; classes are {', '.join(c.name for c in self.classes)}")


# --------------------------------------------------------------------------- feature reduction


def _cells(features: np.ndarray) -> np.ndarray:
    return features.reshape(features.shape[0], -1)


def _chunks(n: int, size: int = _CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _as_torch(a: np.ndarray) -> torch.Tensor:
    """float32 tensor of ``a`` (float16 is converted by torch, much faster than numpy)."""
    if a.dtype in (np.float16, np.float32):
        return torch.from_numpy(a).float()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _full_prototypes(flat: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Σ A f̂ / Σ A over all cells, (K, C), in chunks of cells."""
    a = attention.reshape(len(attention), -1).astype(np.float32)
    num = torch.zeros(len(a), flat.shape[0])
    for s in _chunks(flat.shape[1]):
        num += _as_torch(a[:, s]) @ _as_torch(flat[:, s]).T
    return (num / torch.from_numpy(a.sum(1)).clamp_min(1e-12)[:, None]).numpy()


def _principal_directions(sample: np.ndarray, q: int, seed: int) -> np.ndarray:
    """(C, q) leading right singular vectors of the (n, C) sample (no centring)."""
    x = _as_torch(sample)
    if x.shape[1] <= 1024 or q >= x.shape[1] // 2:
        _, vecs = torch.linalg.eigh(x.T @ x)
        return vecs.flip(1)[:, :q].numpy()
    torch.manual_seed(seed)
    _, _, v = torch.svd_lowrank(x, q=min(q + 16, x.shape[1]), niter=3)
    return v[:, :q].numpy()


def reduce_features(features: np.ndarray, dims: int | str | None = "auto", attention: np.ndarray | None = None, *,
                    dtype=np.float16, min_agreement: float = MIN_AGREEMENT, max_bytes: int = MAX_BYTES,
                    sample: int = 8192, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Project (C, gh, gw) unit features on their first D principal directions.

    The directions are the leading right singular vectors of up to ``sample`` random cells
    (uncentred, so inner products keep their meaning). ``dims="auto"`` measures, on those cells,
    how often the draft assignment (attention prototypes, argmax) agrees with the full features
    and takes the smallest D of :data:`DIMS_LADDER` reaching ``min_agreement``, if it fits in
    ``max_bytes``; else all channels are kept. ``dims=None`` keeps all channels.

    Returns the (D, gh, gw) array in ``dtype`` and a JSON-ready description (``method``,
    ``dims``, ``source_dims``, ``agreement`` on the sample when measured).
    """
    C, gh, gw = features.shape
    flat = _cells(features)
    n = gh * gw
    keep_all = {"method": "none", "dims": C, "source_dims": C}
    if dims is None or (isinstance(dims, int) and dims >= C):
        return features.astype(dtype, copy=False), keep_all
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(n, min(n, sample), replace=False))
    sampled = flat[:, cells].T.astype(np.float32)
    if dims == "auto":
        if attention is None or not len(attention):
            raise ValueError("dims='auto' measures agreement on the class maps: pass attention, or give dims")
        ladder = [d for d in DIMS_LADDER if d < min(C, len(cells)) and d * n * np.dtype(dtype).itemsize <= max_bytes]
        full_protos = _full_prototypes(flat, attention)
        full = (sampled @ full_protos.T).argmax(1)
        basis, agreement, fitted = None, None, 0
        for d in ladder:
            if d > fitted:
                fitted = min(max(d, 4 * fitted), ladder[-1])
                basis_q = _principal_directions(sampled, fitted, seed)
                z = (sampled @ basis_q).astype(dtype).astype(np.float32)
                protos = full_protos @ basis_q
            agreement = float(((z[:, :d] @ protos[:, :d].T).argmax(1) == full).mean())
            if agreement >= min_agreement:
                basis = basis_q[:, :d]
                break
        if basis is None:
            return features.astype(dtype, copy=False), {**keep_all, "agreement": 1.0}
    else:
        dims = int(dims)
        if not 1 <= dims <= len(cells):
            raise ValueError(f"dims must be between 1 and the number of grid cells ({len(cells)}), got {dims}")
        basis = _principal_directions(sampled, dims, seed)
        agreement = None
    out = np.empty((basis.shape[1], n), dtype)
    b = _as_torch(basis.T)
    for s in _chunks(n):
        out[:, s] = (b @ _as_torch(flat[:, s])).numpy()
    info = {"method": "pca", "dims": int(basis.shape[1]), "source_dims": C, "sample_cells": int(len(cells))}
    if agreement is not None:
        info["agreement"] = agreement
    return out.reshape(-1, gh, gw), info


# --------------------------------------------------------------------------- prototypes and scores


def _cell_index(coords: np.ndarray, n_cells: int, stride: float) -> np.ndarray:
    return np.minimum((coords / stride).astype(np.int64), n_cells - 1)


def stroke_weights(labels: np.ndarray, edited: np.ndarray, n_classes: int, grid_shape: tuple[int, int],
                   stride: float) -> np.ndarray:
    """(K, gh, gw) float32: the fraction of each grid cell covered by strokes of each class.

    A stroke pixel is an ``edited`` pixel whose label is a class index; a full cell counts 1.
    """
    gh, gw = grid_shape
    ys, xs = np.nonzero(edited)
    values = labels[ys, xs].astype(np.int64)
    ok = (values >= 0) & (values < n_classes)
    ys, xs, values = ys[ok], xs[ok], values[ok]
    cell = _cell_index(ys, gh, stride) * gw + _cell_index(xs, gw, stride)
    counts = np.bincount(values * (gh * gw) + cell, minlength=n_classes * gh * gw)
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
    by example) is the mean feature under its strokes. ``normalize`` scales each prototype to
    unit length (cosine scores) instead of the paper's plain inner product.

    Returns (K, D) float32 prototypes and the (K,) bool mask of classes that have one (an
    example-only class before its first stroke has none).
    """
    K = state.n_classes
    attn_sum, mass = state.attention_sums
    cells_total = state.grid_shape[0] * state.grid_shape[1]
    w = np.zeros((K, cells_total), np.float32) if weights is None else weights.reshape(K, -1).astype(np.float32)
    cells = np.flatnonzero(w.any(0))
    stroke_sum = (_as_torch(w[:, cells]) @ _as_torch(_cells(state.features)[:, cells]).T).numpy()
    n = w.sum(1)
    text = np.asarray(state.from_text) & (mass > 0)
    share = np.where(text, n / (n + prior_cells), 1.0)[:, None]
    attn_mean = attn_sum / np.maximum(mass, 1e-12)[:, None]
    stroke_mean = stroke_sum / np.maximum(n, 1e-12)[:, None]
    protos = np.where(n[:, None] > 0, (1 - share) * attn_mean + share * stroke_mean, attn_mean)
    active = text | (n > 0)
    if normalize:
        protos = protos / np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return np.where(active[:, None], protos, 0).astype(np.float32), active


def grid_scores(state: RefineState, protos: np.ndarray, active: np.ndarray | None = None, *,
                anchored: bool = False, normalize: bool = False) -> np.ndarray:
    """(K, gh, gw) float32 scores ⟨f̂, c_k⟩ on the grid; classes without a prototype score -1e30.

    ``anchored`` adds the state's :meth:`~RefineState.anchor` (the run's own scores where the
    prototypes are the attention-only ones); ``normalize`` must match the prototypes'.
    """
    feats = _cells(state.features)
    out = np.empty((len(protos), feats.shape[1]), np.float32)
    p = _as_torch(protos)
    for s in _chunks(feats.shape[1]):
        out[:, s] = (p @ _as_torch(feats[:, s])).numpy()
    out = out.reshape(len(protos), *state.grid_shape)
    anchor = state.anchor(normalize) if anchored else None
    if anchor is not None:
        out += anchor
    if active is not None:
        out[~np.asarray(active)] = _FAR
    return out


def _axis_weights(n_pixels: int, n_cells: int, stride: float):
    """Bilinear sources along one axis, as ``align_corners=False``: (i0, i1, weight of i1)."""
    g = np.clip((np.arange(n_pixels) + 0.5) / stride - 0.5, 0, n_cells - 1)
    i0 = np.floor(g).astype(np.int64)
    return i0, np.minimum(i0 + 1, n_cells - 1), (g - i0).astype(np.float32)


def _label_dtype(n_classes: int, like: np.ndarray | None):
    if like is not None:
        return like.dtype
    return np.uint8 if n_classes <= 256 else np.uint16


def _uniform_quads(winner: np.ndarray) -> np.ndarray:
    """(gh, gw) bool: the cells (a, b), (a+1, b), (a, b+1), (a+1, b+1) (clamped) share a winner."""
    w = np.pad(winner, ((0, 1), (0, 1)), mode="edge")
    c = w[:-1, :-1]
    return (c == w[1:, :-1]) & (c == w[:-1, 1:]) & (c == w[1:, 1:])


def assign(scores: np.ndarray, shape: tuple[int, int], stride: float, *, labels: np.ndarray | None = None,
           fixed: np.ndarray | None = None, confidence: bool = False):
    """Pixel labels from (K, gh, gw) grid scores: bilinear scores (align_corners=False), argmax.

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
        raise ValueError("fixed pixels need the labels they keep")
    out = np.empty((H, W), _label_dtype(K, labels))
    margin = np.empty((H, W), np.float32) if confidence else None
    g = np.ascontiguousarray(scores, np.float32)
    x0, x1, wx = _axis_weights(W, gw, stride)
    y0, _, wy = _axis_weights(H, gh, stride)
    left = g[:, :, x0]
    rows = left + (g[:, :, x1] - left) * wx
    winner = g.argmax(0)
    plain = _uniform_quads(winner)[:, x0]
    winner = winner[:, x0].astype(out.dtype)
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
            best = s.argmax(0)
            band[:, cols] = best
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
        The current map (class indices; other values are no class).
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
    """
    labels, edited = _check_maps(state, labels, edited)
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


def _check_maps(state: RefineState, labels, edited):
    labels, edited = np.asarray(labels), np.asarray(edited, bool)
    if labels.shape != state.shape or edited.shape != state.shape:
        raise ValueError(f"labels {labels.shape} and edited mask {edited.shape} must have the image's shape "
                         f"{state.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    return labels, edited


def apply_scribbles(result: SegmentationResult, scribbles: np.ndarray, *, new_classes: Sequence[ClassSpec | str] = (),
                    dims: int | str | None = None, prior_cells: float = PRIOR_CELLS,
                    normalize: bool = False) -> SegmentationResult:
    """A result corrected by a scribble raster: 0 = no stroke, i + 1 = class i.

    Values past the result's K classes are the example-only ``new_classes`` in order. The
    scribbled pixels keep their class; every other pixel is reassigned (:func:`refine`). The
    result needs its features (``keep_features=True``). Returns a new result whose
    confidence is the refined margin (0 on scribbled pixels).
    """
    scribbles = np.asarray(scribbles)
    if scribbles.shape != result.labels.shape:
        raise ValueError(f"scribbles {scribbles.shape} must have the image's shape {result.labels.shape}")
    if scribbles.dtype.kind not in "iub":
        raise ValueError(f"scribbles must be an integer label raster, got {scribbles.dtype}")
    state = RefineState.from_result(result, dims=dims)
    for spec in new_classes:
        state = add_class(state, spec)
    K = state.n_classes
    top = int(scribbles.max()) if scribbles.size else 0
    if top > K or (scribbles.size and int(scribbles.min()) < 0):
        raise ValueError(f"scribble values must be 0 (no stroke) or 1-{K} (a class), found {top}")
    edited = scribbles > 0
    dtype = np.uint8 if K <= 256 else np.uint16
    labels = np.where(edited, scribbles.astype(np.int64) - 1, result.labels).astype(dtype)
    labels, margin = refine(state, labels, edited, prior_cells=prior_cells, normalize=normalize, confidence=True)
    return replace(result, labels=labels, confidence=margin, classes=list(state.classes), scores=None)


# --------------------------------------------------------------------------- classes


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
    return replace(state, attention=attention, classes=tuple(specs), from_text=(*state.from_text, False), base=base)


def _drop_index(labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Class indices above ``k`` move down by one; other values stay."""
    out = labels.copy()
    out[(labels > k) & (labels < n_classes)] -= 1
    return out


def remove_class(state: RefineState, labels: np.ndarray, edited: np.ndarray, k: int, **options):
    """Remove class ``k``: its pixels (painted ones included) go to the best remaining class.

    Other pixels keep their value (indices above ``k`` move down by one). ``options`` go to
    :func:`refine`. Returns (state, labels, edited).
    """
    labels, edited = _check_maps(state, labels, edited)
    K = state.n_classes
    if not 0 <= k < K:
        raise IndexError(f"class index {k} out of range 0-{K - 1}")
    if K == 1:
        raise ValueError("cannot remove the only class")
    mine = labels == k
    new_state = replace(state, attention=np.delete(state.attention, k, 0),
                        classes=state.classes[:k] + state.classes[k + 1:],
                        from_text=state.from_text[:k] + state.from_text[k + 1:],
                        base=None if state.base is None else np.delete(state.base, k, 0))
    new_edited = edited & ~mine
    out = refine(new_state, _drop_index(labels, k, K), new_edited, keep=~mine, **options)
    return new_state, out, new_edited


def merge_classes(state: RefineState, labels: np.ndarray, edited: np.ndarray, sources: Sequence[int] | int,
                  into: int):
    """Merge classes ``sources`` into class ``into``: their pixels and strokes become ``into``'s.

    The merged class's map is the pixel-wise maximum of the maps (still max-normalised) and
    its prompts the union of theirs; it keeps its name and colour. Returns (state, labels, edited).
    """
    labels, edited = _check_maps(state, labels, edited)
    K = state.n_classes
    sources = sorted({int(s) for s in np.atleast_1d(sources)} - {int(into)})
    if not all(0 <= s < K for s in (*sources, into)):
        raise IndexError(f"class indices must be in 0-{K - 1}")
    if not sources:
        return state, labels.copy(), edited.copy()
    out = np.where(np.isin(labels, sources), into, labels).astype(labels.dtype)
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
        out = _drop_index(out, s, len(classes))
        attention = np.delete(attention, s, 0)
        base = None if base is None else np.delete(base, s, 0)
        del classes[s], from_text[s]
    merged = replace(state, attention=attention, classes=tuple(classes), from_text=tuple(from_text), base=base)
    return merged, out, edited.copy()


def rename_class(state: RefineState, k: int, name: str, color: Sequence[int] | None = None) -> RefineState:
    """A state where class ``k`` has a new name (and colour); its pixels stay as they are."""
    old = state.classes[k]
    classes = list(state.classes)
    classes[k] = ClassSpec(name, old.prompts, tuple(color) if color is not None else old.color)
    return replace(state, classes=tuple(as_class_specs(classes)))


# --------------------------------------------------------------------------- confidence


def grid_margin(scores: np.ndarray) -> np.ndarray:
    """(gh, gw) float32 margin between the two best grid scores: a cheap confidence map.

    Shown with the layer scale ``stride`` it is the confidence layer of the annotator; the
    per-pixel margin comes from :func:`assign` with ``confidence=True``.
    """
    if len(scores) < 2:
        return np.ones(scores.shape[1:], np.float32)
    top2 = np.partition(scores, len(scores) - 2, axis=0)[-2:]
    return np.where(top2[0] <= _FAR / 2, 1.0, top2[1] - top2[0]).astype(np.float32)


def next_unsure_region(margin: np.ndarray, *, exclude: np.ndarray | None = None, visited: Sequence = (),
                       quantile: float = 0.05, step: int = 4):
    """The largest connected region of low margin, for the annotator to look at next.

    Low margin is below the ``quantile`` of the margins of the pixels not ``exclude``-d (the
    ones the annotator set); regions are found on every ``step``-th pixel. Regions containing
    one of the ``visited`` (y, x) points are skipped, so repeated calls walk down the list.

    Returns ``((y, x) centre, (y0, x0, y1, x1) bounding box)`` in pixels, or ``None``.
    """
    from scipy import ndimage

    m = np.asarray(margin)[::step, ::step]
    ok = np.ones(m.shape, bool) if exclude is None else ~np.asarray(exclude, bool)[::step, ::step]
    if not ok.any():
        return None
    level = np.quantile(m[ok], quantile)
    low = ok & (m <= level)
    if low.sum() == ok.sum():
        low = ok & (m < level)
    regions, n = ndimage.label(low)
    if n == 0:
        return None
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    sizes[0] = 0
    for y, x in visited:
        yy, xx = int(y) // step, int(x) // step
        if 0 <= yy < m.shape[0] and 0 <= xx < m.shape[1]:
            sizes[regions[yy, xx]] = 0
    best = int(sizes.argmax())
    if sizes[best] == 0:
        return None
    ys, xs = np.nonzero(regions == best)
    inside = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    centre = (int(ys[inside]) * step, int(xs[inside]) * step)
    box = (int(ys.min()) * step, int(xs.min()) * step, int(ys.max() + 1) * step, int(xs.max() + 1) * step)
    return centre, box

"""Feature reduction for the refinement cache: f̂ projected on its first principal directions.

f̂ has C = 2880 channels for SD 1.x: a 6000×6000 tile (375×375 grid) takes 810 MB in float16.
:func:`reduce_features` projects f̂ on its first D uncentred principal directions (fitted on a
sample of cells) and stores them in float16. Scores are inner products and prototypes are
linear in f̂, so the reduced scores are those of f̂ projected on that subspace.
``dims="auto"`` takes the smallest D of :data:`DIMS_LADDER` at which the draft assignment of
the sampled cells agrees with the full features on at least ``min_agreement`` (99.5 %), else
keeps all channels; D = 256 makes a 6000² tile 72 MB (``docs/algorithm.md`` §4).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BadInputError
from .prototypes import prototype_sums

__all__ = ["DIMS_LADDER", "MAX_BYTES", "MIN_AGREEMENT", "chunks", "flat_cells", "reduce_features", "to_torch"]

#: Candidate feature dimensions of ``dims="auto"``.
DIMS_LADDER = (16, 32, 64, 128, 256, 512)
#: Agreement with the full features that ``dims="auto"`` asks of the draft assignment.
MIN_AGREEMENT = 0.995
#: Memory a refinement cache may take (the goal for a 6000×6000 tile).
MAX_BYTES = 1 << 30

_CHUNK = 16384


def flat_cells(features: np.ndarray) -> np.ndarray:
    return features.reshape(features.shape[0], -1)


def chunks(n: int, size: int = _CHUNK):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def to_torch(a: np.ndarray) -> torch.Tensor:
    """float32 tensor of ``a`` (float16 is converted by torch, much faster than numpy)."""
    if a.dtype in (np.float16, np.float32):
        return torch.from_numpy(a).float()
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _full_prototypes(flat: np.ndarray, attention: np.ndarray) -> np.ndarray:
    """Σ A f̂ / Σ A over all cells, (K, C)."""
    num, den = prototype_sums(attention, flat)
    return (num / den.clamp_min(1e-12)[:, None]).numpy()


def _principal_directions(sample: np.ndarray, q: int, seed: int) -> np.ndarray:
    """(C, q) leading right singular vectors of the (n, C) sample (no centring)."""
    x = to_torch(sample)
    if x.shape[1] <= 1024 or q >= x.shape[1] // 2:
        _, vecs = torch.linalg.eigh(x.T @ x)
        return vecs.flip(1)[:, :q].numpy()
    torch.manual_seed(seed)
    _, _, v = torch.svd_lowrank(x, q=min(q + 16, x.shape[1]), niter=3)
    return v[:, :q].numpy()


def reduce_features(features: np.ndarray, dims: int | str | None = "auto", attention: np.ndarray | None = None, *,
                    dtype=np.float16, min_agreement: float = MIN_AGREEMENT, max_bytes: int = MAX_BYTES,
                    sample: int = 8192, seed: int = 0, return_basis: bool = False) -> tuple:
    """Project (C, gh, gw) unit features on their first D principal directions.

    The directions are the leading right singular vectors of up to ``sample`` random cells
    (uncentred, so inner products keep their meaning). ``dims="auto"`` measures, on those cells,
    how often the draft assignment (attention prototypes, argmax) agrees with the full features
    and takes the smallest D of :data:`DIMS_LADDER` reaching ``min_agreement``, if it fits in
    ``max_bytes``; else all channels are kept. ``dims=None`` keeps all channels.

    Returns the (D, gh, gw) array in ``dtype`` and a JSON-ready description (``method``,
    ``dims``, ``source_dims``, ``agreement`` on the sample when measured); with
    ``return_basis`` also the (C, D) float32 projection (``None`` when every channel is kept),
    which carries a feature between the two spaces (:mod:`.memory`).
    """
    C, gh, gw = features.shape
    flat = flat_cells(features)
    n = gh * gw
    keep_all = {"method": "none", "dims": C, "source_dims": C}

    def done(out, info, basis=None):
        return (out, info, basis) if return_basis else (out, info)

    if dims is None or (isinstance(dims, int) and dims >= C):
        return done(features.astype(dtype, copy=False), keep_all)
    rng = np.random.default_rng(seed)
    cells = np.sort(rng.choice(n, min(n, sample), replace=False))
    sampled = flat[:, cells].T.astype(np.float32)
    if dims == "auto":
        if attention is None or not len(attention):
            raise BadInputError("dims='auto' measures agreement on the class maps: pass attention, or give dims")
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
            return done(features.astype(dtype, copy=False), {**keep_all, "agreement": 1.0})
    else:
        dims = int(dims)
        if not 1 <= dims <= len(cells):
            raise BadInputError(f"dims must be between 1 and the number of grid cells ({len(cells)}), got {dims}")
        basis = _principal_directions(sampled, dims, seed)
        agreement = None
    out = np.empty((basis.shape[1], n), dtype)
    b = to_torch(basis.T)
    for s in chunks(n):
        out[:, s] = (b @ to_torch(flat[:, s])).numpy()
    info = {"method": "pca", "dims": int(basis.shape[1]), "source_dims": C, "sample_cells": int(len(cells))}
    if agreement is not None:
        info["agreement"] = agreement
    return done(out.reshape(-1, gh, gw), info, np.ascontiguousarray(basis, np.float32))

"""The equations of ``docs/algorithm.md`` §2.4–2.6 on plain tensors: class maps, features,
prototypes, scores.

All functions take and return float32 ``torch`` tensors on any device, without batch axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional

from .tokens import TokenSpan

__all__ = [
    "class_maps",
    "normalize_features",
    "prototype_sums",
    "prototypes",
    "class_scores",
    "upsample",
    "cluster_scores",
]


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (C, h, w) to ``size`` with ``align_corners=False``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return functional.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]


def class_maps(token_maps: torch.Tensor, spans: Sequence[Sequence[TokenSpan]], eps: float = 1e-12) -> torch.Tensor:
    """(K, h, w) class maps from (prompts, 77, h, w) head-averaged token maps.

    A class's map is the mean over its token span (averaged over its prompt texts), divided by
    its own maximum over the tile.
    """
    maps = []
    for class_spans in spans:
        per_text = [token_maps[s.prompt, s.start : s.stop].mean(0) for s in class_spans]
        maps.append(torch.stack(per_text).mean(0))
    if not maps:
        return token_maps.new_zeros((0, *token_maps.shape[-2:]))
    m = torch.stack(maps)
    return m / m.flatten(1).amax(1).clamp_min(eps)[:, None, None]


def normalize_features(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """f̂: each feature map L2-normalised over channels, coarse resized to fine, concatenated,
    normalised again. (C1, h1, w1), (C2, h2, w2) -> (C1 + C2, h2, w2)."""
    coarse = functional.normalize(coarse, dim=0)
    fine = functional.normalize(fine, dim=0)
    return functional.normalize(torch.cat([upsample(coarse, fine.shape[-2:]), fine]), dim=0)


def prototype_sums(maps, feats, chunk: int = 16384) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_p A_k(p) f̂(p) (K, C) and Σ_p A_k(p) (K,), float32, over the cells of a grid.

    The one implementation of the prototype sum (``docs/algorithm.md`` §2.6): the engine's
    per-tile and image-wide prototypes, batch's shared prototypes and refinement's stroke
    prototypes all add these. ``maps`` (K, ...) and ``feats`` (C, ...) share their trailing
    grid axes; they may be tensors on any device or numpy arrays (float16 included), and are
    read ``chunk`` cells at a time, so a 6000² tile's features are never copied whole.

    Examples
    --------
    >>> import torch
    >>> num, den = prototype_sums(torch.ones(2, 4, 4), torch.ones(3, 4, 4))
    >>> num.shape, den.tolist()
    (torch.Size([2, 3]), [16.0, 16.0])
    """
    a, f = _cells(maps), _cells(feats)
    num = torch.zeros((a.shape[0], f.shape[0]), dtype=torch.float32, device=a.device)
    den = torch.zeros(a.shape[0], dtype=torch.float32, device=a.device)
    for start in range(0, a.shape[1], chunk):
        block = a[:, start:start + chunk].float()
        num += block @ f[:, start:start + chunk].to(a.device).float().T
        den += block.sum(1)
    return num, den


def _cells(x) -> torch.Tensor:
    """(N, ...) as an (N, cells) tensor without copying numpy memory."""
    if not isinstance(x, torch.Tensor):
        import numpy as np

        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.reshape(x.shape[0], -1)


def prototypes(maps: torch.Tensor, feats: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """c_k = Σ_p A_k(p) f̂(p) / Σ_p A_k(p): (K, C), not re-normalised (as the official code)."""
    num, den = prototype_sums(maps, feats)
    return num / den.clamp_min(eps)[:, None]


def class_scores(feats: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """S_k(p) = ⟨f̂(p), c_k⟩: (K, h, w)."""
    return torch.einsum("kc,chw->khw", protos, feats)


def cluster_scores(feats: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """⟨f̂, c⟩ - |c|²/2: its argmax is the nearest centroid (|f̂| = 1), as k-means assigns."""
    return class_scores(feats, centroids) - 0.5 * (centroids * centroids).sum(1)[:, None, None]

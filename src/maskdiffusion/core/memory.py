"""Corrections teach the next drafts: a per-class memory of features under corrected labels
(``docs/algorithm.md`` §4.7).

For each class k the memory keeps m_k = Σ_p w_k(p) f̂(p) and n_k = Σ_p w_k(p) over the grid
cells of the corrected images of a dataset, w_k(p) the fraction of cell p whose final label is
k. The sums live in the model's own feature space f̂ (C = 2880 for SD 1.x), never in one
image's reduction, so images add up. A later draft mixes them into each class prototype:

    c_k = (1 − a_k)·c_k^att + a_k·m_k/n_k,   a_k = n_k / (n_k + n0)

with c_k^att the paper's attention prototype (§2.6) and n0 = :data:`MEMORY_CELLS`. A class the
memory knows and the prompt does not (one added by example) has m_k/n_k as its prototype.
Without contributions a_k = 0 and the prototypes are the paper's, bit for bit.

Each image's contribution is kept on its own (by a key, the image's name), so correcting an
image again replaces what it taught instead of counting it twice. Classes are matched by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import BadInputError
from .class_edits import add_class
from .classes import ClassSpec
from .prototypes import prototype_sums
from .refine import RefineState, class_prototypes, cover_fractions, grid_scores

__all__ = ["MEMORY_CELLS", "ClassMemory", "Contribution", "apply_memory"]

#: n0: the grid cells of corrected labels at which a class's memory weighs as much as its
#: attention prototype: a quarter of a 512² tile (65,536 px of the class) halves the
#: attention's say, and a few images' worth outweighs it.
MEMORY_CELLS = 256.0


def _names(classes) -> list[str]:
    return [str(getattr(c, "name", c)) for c in classes]


@dataclass(frozen=True)
class Contribution:
    """What one corrected image taught: class names, (K, C) float64 feature sums, (K,) counts."""

    names: tuple[str, ...]
    sums: np.ndarray
    counts: np.ndarray


@dataclass
class ClassMemory:
    """Per-class sums of the features under corrected labels, image by image.

    Examples
    --------
    >>> import numpy as np
    >>> memory = ClassMemory()
    >>> features = np.zeros((4, 2, 2), np.float32); features[0] = 1        # (C, gh, gw) unit features
    >>> labels = np.ones((32, 32), np.uint8); labels[:, 16:] = 2           # left road, right tree
    >>> memory.update("image 1", features, labels, ["road", "tree"], stride=16)
    >>> memory.counts(["road", "tree", "sand"]).tolist()
    [2.0, 2.0, 0.0]
    >>> round(float(memory.shares(["road"])[0]), 4)                          # a_k = 2 / (2 + n0)
    0.0078
    >>> memory.forget("image 1"); memory.counts(["road"]).tolist()
    [0.0]
    """

    n0: float = MEMORY_CELLS
    images: dict[str, Contribution] = field(default_factory=dict)

    def update(self, key: str, features: np.ndarray, labels: np.ndarray, classes: Sequence[ClassSpec | str],
               stride: float, basis: np.ndarray | None = None) -> None:
        """Learn image ``key`` (replacing what it taught before) from its final ``labels``.

        ``features``: (D, gh, gw) on the labels' grid of ``stride`` pixels a cell: f̂, or its
        projection by ``basis`` (C, D), whose sums are carried back to f̂'s space (the part of
        f̂ outside that subspace is not seen). ``labels``: (H, W), 0 = unlabelled, k = ``classes[k - 1]``.
        """
        names = _names(classes)
        weights = cover_fractions(labels, len(names), features.shape[1:], stride)
        sums, counts = (s.numpy().astype(np.float64) for s in prototype_sums(weights, features))
        if basis is not None:
            sums = sums @ basis.T.astype(np.float64)
        seen = counts > 0
        self.images[key] = Contribution(tuple(np.asarray(names, object)[seen]), sums[seen], counts[seen])

    def learn(self, key: str, state: RefineState, labels: np.ndarray) -> None:
        """:meth:`update` from a refinement state (its features, classes, grid and basis)."""
        self.update(key, state.features, labels, state.classes, state.stride, state.basis)

    def forget(self, key: str) -> None:
        """Drop what image ``key`` taught (nothing if it taught nothing)."""
        self.images.pop(key, None)

    def reset(self) -> None:
        """Forget every image."""
        self.images.clear()

    @property
    def names(self) -> list[str]:
        """Every class some image taught, in order of first appearance."""
        return list(dict.fromkeys(n for c in self.images.values() for n in c.names))

    @property
    def dims(self) -> int | None:
        """C, the feature dimension of the sums (``None`` while empty)."""
        return next((c.sums.shape[1] for c in self.images.values() if len(c.names)), None)

    def knows(self, name: str) -> bool:
        return bool(self.counts([name])[0] > 0)

    def _totals(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        index = {n.lower(): i for i, n in enumerate(names)}
        sums = np.zeros((len(names), self.dims or 0))
        counts = np.zeros(len(names))
        for c in self.images.values():
            for name, s, n in zip(c.names, c.sums, c.counts):
                i = index.get(name.lower())
                if i is not None:
                    sums[i] += s
                    counts[i] += n
        return sums, counts

    def counts(self, classes: Sequence[ClassSpec | str]) -> np.ndarray:
        """(K,) n_k: the grid cells each class covered in the corrected images."""
        return self._totals(_names(classes))[1]

    def shares(self, classes: Sequence[ClassSpec | str]) -> np.ndarray:
        """(K,) a_k = n_k / (n_k + n0): each class's share of its prototype taken by the memory."""
        n = self.counts(classes)
        return n / (n + self.n0)

    def means(self, classes: Sequence[ClassSpec | str]) -> tuple[np.ndarray, np.ndarray]:
        """(K, C) m_k / n_k (zero for classes the memory does not know) and the (K,) shares a_k."""
        sums, counts = self._totals(_names(classes))
        return sums / np.maximum(counts, 1e-12)[:, None], counts / (counts + self.n0)

    def _check_dims(self, dims: int, what: str) -> None:
        if self.dims is not None and self.dims != dims:
            raise BadInputError(f"the class memory holds features of {self.dims} dimensions, {what} has {dims}: it "
                                "was learnt with another model; reset the memory to use this one")

    def mix(self, protos, classes: Sequence[ClassSpec | str]):
        """The engine's hook: (K, C) torch prototypes of ``classes`` mixed with the memory,
        c_k = (1 − a_k)·c_k + a_k·m_k/n_k; classes the memory does not know keep theirs exactly."""
        means, share = self.means(classes)
        if not share.any():
            return protos
        self._check_dims(protos.shape[1], "the model's feature map")
        import torch

        a = torch.as_tensor(share, dtype=protos.dtype, device=protos.device)[:, None]
        m = torch.as_tensor(means, dtype=protos.dtype, device=protos.device)
        return torch.where(a > 0, (1 - a) * protos + a * m, protos)

    def prior(self, state: RefineState) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The memory's prototypes of ``state``'s classes in its feature space (through its basis)
        and their shares a_k, for :attr:`RefineState.prior`; (None, None) when it knows none."""
        means, share = self.means(state.classes)
        if not share.any():
            return None, None
        if state.basis is not None:
            self._check_dims(state.basis.shape[0], "this image's refinement state")
            means = means @ state.basis
        else:
            self._check_dims(state.features.shape[0], "this image's refinement state")
        return means.astype(np.float32), share.astype(np.float32)


def apply_memory(state: RefineState, memory: ClassMemory | None, classes: Sequence[ClassSpec] = (), *,
                 rescore: bool = True) -> RefineState:
    """``state`` with ``memory``'s prototypes as its prior, without a model call.

    Classes of ``classes`` that the state lacks are added as classes by example: known from
    the memory only, or (unknown to it) waiting for their first stroke. With ``rescore``, the
    draft scores ``state.base`` move by what the new prior changes in each prototype,
    ⟨f̂, c_k^new − c_k^old⟩: a stored draft (a batch output, or one made before the latest
    corrections) becomes the draft the memory gives now, and an empty memory gives back the
    paper's. Without ``rescore`` the scores already hold the memory (the engine drafted with
    it): only the prior is set, for refinement.
    """
    known = {c.name.lower() for c in state.classes}
    for spec in classes:
        if spec.name.lower() not in known:
            state = add_class(state, spec)
    prior, share = (None, None) if memory is None else memory.prior(state)
    updated = replace(state, prior=prior, prior_share=share)
    if rescore and state.base is not None:
        delta = class_prototypes(updated)[0] - class_prototypes(state)[0]
        updated = replace(updated, base=state.base + grid_scores(state, delta))
    return updated

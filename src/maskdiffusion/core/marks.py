"""The pixels the annotator set, one bit a pixel.

A session keeps which pixels were painted (kept exactly, learnt from) beside its label map. As a
bool array that is a byte a pixel, 34 MB at 6000²; :class:`Marks` keeps the same mask with
:func:`numpy.packbits` over the flattened image (the layout of a session bundle's
``edited-<id>.npy``), an eighth of that, and unpacks only the rows a caller reads.

Examples
--------
>>> import numpy as np
>>> marks = Marks((4, 10))
>>> marks.flip(np.array([3, 12, 13]))
>>> marks.sum(), marks[1:2, 0:5]
(3, array([[False, False,  True,  True, False]]))
>>> marks.flip(np.array([12]))
>>> np.asarray(marks).nonzero()
(array([0, 1]), array([3, 3]))
"""

from __future__ import annotations

import numpy as np

__all__ = ["Marks"]

_SET_BITS = np.array([bin(byte).count("1") for byte in range(256)], np.uint8)


class Marks:
    """An (H, W) bool mask stored as bits.

    Reads: ``marks[y0:y1, x0:x1]`` (a bool array; other keys index the whole mask),
    ``np.asarray(marks)``, :meth:`any`, :meth:`sum`. The one write is :meth:`flip`, which is
    what undo steps keep.
    """

    __slots__ = ("bits", "shape")

    def __init__(self, shape: tuple[int, int], bits: np.ndarray | None = None):
        self.shape = (int(shape[0]), int(shape[1]))
        size = self.size
        if bits is None:
            bits = np.zeros((size + 7) // 8, np.uint8)
        elif bits.dtype != np.uint8 or bits.shape != ((size + 7) // 8,):
            raise ValueError(f"{bits.shape} {bits.dtype} bits do not pack a {self.shape} mask")
        self.bits = bits

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Marks:
        mask = np.asarray(mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"marks are an (H, W) mask, not {mask.shape}")
        return cls(mask.shape, np.packbits(mask.reshape(-1)))

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    def __getitem__(self, key) -> np.ndarray:
        if (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)
                and key[0].step in (None, 1)):
            y0, y1, _ = key[0].indices(self.shape[0])
            return self.rows(y0, max(y0, y1))[:, key[1]]
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = self.rows(0, self.shape[0])
        return values if dtype is None else values.astype(dtype)

    @property
    def nbytes(self) -> int:
        return self.bits.nbytes

    def copy(self) -> Marks:
        return Marks(self.shape, self.bits.copy())

    def any(self) -> bool:
        return bool(self.bits.any())

    def sum(self) -> int:
        """The number of marked pixels."""
        return int(_SET_BITS[self.bits].sum(dtype=np.int64))

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """The (y1 - y0, W) bool mask of rows ``y0:y1``."""
        width = self.shape[1]
        start, stop = y0 * width, y1 * width
        first = start >> 3
        flat = np.unpackbits(self.bits[first:(stop + 7) >> 3], count=stop - first * 8)[start - first * 8:]
        return flat.view(bool).reshape(y1 - y0, width)

    def flip(self, flat: np.ndarray) -> None:
        """Flip the marks at ``flat`` pixel indices (each once; sorted is fastest)."""
        flat = np.asarray(flat, np.int64)
        if not flat.size:
            return
        if (flat[1:] < flat[:-1]).any():
            flat = np.sort(flat)
        byte = flat >> 3
        bit = (np.uint8(0x80) >> (flat & 7).astype(np.uint8)).astype(np.uint8)
        starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
        self.bits[byte[starts]] ^= np.bitwise_or.reduceat(bit, starts)

    def __repr__(self) -> str:
        return f"Marks({self.shape}, {self.sum()} marked)"

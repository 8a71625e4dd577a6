"""A session's label map, four bits a pixel while its values fit.

A session keeps its (H, W) label map (:mod:`.labels`: 0 = unlabelled, k = class k) beside the
napari layers that show it: a byte a pixel is 34 MB at 6000², the largest part of what the
session holds. With up to 15 classes every value fits in four bits, so :class:`LabelMap` keeps
two pixels a byte (the first in the high nibble), like :class:`~.marks.Marks` keeps bits, and
unpacks only the rows a caller reads. Larger values are kept a byte (or two) a pixel, as they are.

Examples
--------
>>> import numpy as np
>>> labels = LabelMap.from_array(np.array([[0, 1, 2], [3, 4, 5]], np.uint8))
>>> labels.bits, labels.nbytes
(4, 3)
>>> labels.xor_at(np.array([1, 4]), np.array([1 ^ 7, 4 ^ 2]))
>>> labels[0:2, 1:3]
array([[7, 2],
       [2, 5]], dtype=uint8)
>>> labels.fit(40)
>>> labels.bits, np.asarray(labels).tolist()
(8, [[0, 7, 2], [3, 2, 5]])
"""

from __future__ import annotations

import numpy as np

from .labels import label_dtype
from .packed_rows import PackedRows

__all__ = ["LabelMap"]

_NIBBLE = 15


def _bits_for(top: int) -> int:
    """The narrowest storage that holds values up to ``top``."""
    if top <= _NIBBLE:
        return 4
    return 8 * np.dtype(label_dtype(top)).itemsize


def _dtype_for(bits: int, top: int) -> np.dtype:
    """The values' dtype of a map stored in ``bits`` a pixel holding values up to ``top``."""
    return np.dtype(np.uint8 if bits <= 8 else label_dtype(top))


def _storage_dtype(bits: int, dtype: np.dtype) -> np.dtype:
    """The stored dtype of a map of ``bits`` a pixel whose values read as ``dtype``."""
    return np.dtype(np.uint8 if bits == 4 else dtype)


def _nibble_shift(flat: np.ndarray) -> np.ndarray:
    """Where each flat pixel sits in its byte: 4 for the high nibble (even index), 0 for the low."""
    return ((1 - (flat & 1)) * 4).astype(np.uint8)


def _pack(values: np.ndarray) -> np.ndarray:
    """Flat values below 16 two a byte, the first in the high nibble (an odd count is padded)."""
    values = np.asarray(values, np.uint8).reshape(-1)
    if values.size % 2:
        values = np.append(values, np.uint8(0))
    packed = np.left_shift(values[0::2], 4)
    packed |= values[1::2]
    return packed


def _stored(values: np.ndarray, bits: int, dtype: np.dtype) -> np.ndarray:
    """Flat storage of ``values`` at ``bits`` a pixel (a fresh array)."""
    flat = np.asarray(values).reshape(-1)
    return _pack(flat) if bits == 4 else flat.astype(dtype, copy=True)


class LabelMap(PackedRows):
    """An (H, W) label map of non-negative integers, packed two pixels a byte when they fit.

    Reads as a NumPy array: ``labels[y0:y1, x0:x1]`` (only those rows are unpacked; other keys
    index the whole map), ``np.asarray(labels)``, ``labels == k``, :attr:`shape`,
    :attr:`dtype`. The writes are XORs, which is what undo steps keep: :meth:`xor_at` at flat
    pixel indices and :meth:`xor_map` with a map of differences (:meth:`like`); :meth:`fit`
    widens the storage before larger values are written.
    """

    __slots__ = ("bits", "data", "dtype", "shape")

    def __init__(self, shape: tuple[int, int], bits: int = 4, data: np.ndarray | None = None,
                 dtype=np.uint8):
        self.shape = (int(shape[0]), int(shape[1]))
        self.bits, self.dtype = int(bits), np.dtype(dtype)
        if self.bits == 4 and self.dtype != np.uint8:
            raise ValueError("a four-bit label map reads as uint8")
        stored = _storage_dtype(self.bits, self.dtype)
        length = (self.size + 1) // 2 if self.bits == 4 else self.size
        if data is None:
            data = np.zeros(length, stored)
        elif data.dtype != stored or data.shape != (length,):
            raise ValueError(f"{data.shape} {data.dtype} data do not hold a {self.shape} map of {bits} bits")
        self.data = data

    @classmethod
    def from_array(cls, labels: np.ndarray, n_classes: int = 0) -> LabelMap:
        """Pack an (H, W) label map in the narrowest storage that holds its values and the
        values of ``n_classes`` classes."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.dtype.kind not in "ub":
            raise ValueError(f"a label map is an (H, W) array of unsigned integers, not {labels.shape} {labels.dtype}")
        top = max(int(n_classes), int(labels.max()) if labels.size else 0)
        bits = _bits_for(top)
        dtype = _dtype_for(bits, top)
        return cls(labels.shape, bits, _stored(labels, bits, dtype), dtype)

    @classmethod
    def from_buffer(cls, shape: tuple[int, int], bits: int, buffer, dtype=np.uint8) -> LabelMap:
        """A read-only map over the stored bytes of a map of ``bits`` a pixel (its :attr:`data`)."""
        return cls(shape, bits, np.frombuffer(buffer, _storage_dtype(bits, np.dtype(dtype))), dtype)

    # ------------------------------------------------------------------ reading

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def copy(self) -> LabelMap:
        return LabelMap(self.shape, self.bits, self.data.copy(), self.dtype)

    def like(self, values: np.ndarray) -> LabelMap:
        """A map of the same shape and storage holding ``values`` (a map of differences)."""
        values = np.asarray(values)
        if values.size != self.size:
            raise ValueError(f"{values.size} values for a map of {self.size} pixels")
        return LabelMap(self.shape, self.bits, _stored(values, self.bits, self.dtype), self.dtype)

    def flat_range(self, start: int, stop: int) -> np.ndarray:
        """The values of flat pixels ``start:stop``."""
        if self.bits != 4:
            return self.data[start:stop].copy()
        first = start >> 1
        packed = self.data[first:(stop + 1) >> 1]
        out = np.empty(2 * len(packed), np.uint8)
        np.right_shift(packed, 4, out=out[0::2])
        np.bitwise_and(packed, _NIBBLE, out=out[1::2])
        return out[start - 2 * first:stop - 2 * first]

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """The (y1 - y0, W) values of rows ``y0:y1``."""
        width = self.shape[1]
        return self.flat_range(y0 * width, y1 * width).reshape(y1 - y0, width)

    def take(self, flat: np.ndarray) -> np.ndarray:
        """The values at ``flat`` pixel indices."""
        flat = np.asarray(flat, np.int64)
        if self.bits != 4:
            return self.data[flat]
        return np.right_shift(self.data[flat >> 1], _nibble_shift(flat)) & np.uint8(_NIBBLE)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype)

    def __eq__(self, other):
        return np.asarray(self) == np.asarray(other)

    def __ne__(self, other):
        return np.asarray(self) != np.asarray(other)

    __hash__ = None

    # ------------------------------------------------------------------ writing

    def fit(self, top: int) -> None:
        """Widen the storage, if needed, so that values up to ``top`` can be written."""
        bits = _bits_for(int(top))
        if bits <= self.bits:
            return
        values = np.asarray(self)
        self.bits, self.dtype = bits, _dtype_for(bits, int(top))
        self.data = _stored(values, bits, self.dtype)

    def xor_at(self, flat: np.ndarray, values: np.ndarray) -> None:
        """XOR ``values`` into the pixels at distinct ``flat`` indices (sorted is fastest;
        :meth:`fit` first for values wider than the storage)."""
        flat, values = np.asarray(flat, np.int64), np.asarray(values)
        if not flat.size:
            return
        if (flat[1:] < flat[:-1]).any():
            order = np.argsort(flat, kind="stable")
            flat, values = flat[order], values[order]
        if self.bits != 4:
            self.data[flat] ^= values.astype(self.dtype, copy=False)
            return
        byte = flat >> 1
        nibbles = np.left_shift(values.astype(np.uint8) & np.uint8(_NIBBLE), _nibble_shift(flat))
        starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
        self.data[byte[starts]] ^= np.bitwise_xor.reduceat(nibbles, starts)

    def xor_map(self, other: LabelMap) -> None:
        """XOR the values of ``other``, a map of the same shape, into this one."""
        if other.shape != self.shape:
            raise ValueError(f"a {other.shape} map cannot change a {self.shape} one")
        if other.bits == self.bits:
            self.data ^= other.data
        else:
            self.data ^= _stored(np.asarray(other), self.bits, self.dtype)

    def __repr__(self) -> str:
        return f"LabelMap({self.shape}, {self.bits} bits a pixel)"

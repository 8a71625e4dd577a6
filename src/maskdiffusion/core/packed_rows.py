"""How the session's packed maps read: as (H, W) NumPy arrays, unpacking only the rows asked for.

:class:`~.marks.Marks` (a bit a pixel) and :class:`~.label_map.LabelMap` (four bits a pixel)
keep a 6000² map in a fraction of its bytes; :class:`PackedRows` gives both the array reads
the napari face and the refinement make, from one method each implements, ``rows(y0, y1)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PackedRows"]


class PackedRows:
    """Array reads of a packed (H, W) map: ``packed[y0:y1, x0:x1]`` unpacks only rows
    ``y0:y1``; any other key, and ``np.asarray(packed)``, unpack the whole map."""

    __slots__ = ()
    shape: tuple[int, int]

    def rows(self, y0: int, y1: int) -> np.ndarray:
        """The (y1 - y0, W) values of rows ``y0:y1``."""
        raise NotImplementedError

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

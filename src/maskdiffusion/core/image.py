"""Any input image as the 8-bit RGB tiles the model sees (``docs/algorithm.md`` §3).

Accepts (H, W) or (H, W, C) arrays of any size, uint8/uint16/int/float/bool, gray, RGB, RGBA or
multi-band with a band choice. Nothing is converted whole: tiles are cut, stretched to 8 bits and
resampled on demand, so a 20,000 px image (or a memory map) costs no float copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import BadInputError

__all__ = ["InputImageError", "ImageSource", "MAX_BANDS", "choose_bands"]

#: More trailing channels than this means the array is not channels-last (a stack, say).
MAX_BANDS = 64


class InputImageError(BadInputError):
    """An image that cannot be segmented, with the reason in one sentence."""


class ImageSource:
    """Read access to an image as 8-bit RGB, optionally resampled by ``scale``.

    ``shape`` is the (height, width) the model works on (the input's times ``scale``); ``tile``
    cuts any window of it, reflect-padding past the border so tiles are never squashed.
    ``valid`` ((H, W) bool, False where the image holds no data) keeps nodata pixels out of
    the contrast stretch.
    """

    def __init__(self, image, bands: Sequence[int] | None = None, scale: float = 1.0, stretch=(1.0, 99.0),
                 valid: np.ndarray | None = None):
        arr = np.asarray(image) if not hasattr(image, "shape") else image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3):
            raise InputImageError(f"expected an image of shape (H, W) or (H, W, bands), got shape {tuple(arr.shape)}")
        if arr.ndim == 3 and arr.shape[2] > MAX_BANDS and bands is None:
            raise InputImageError(_too_many_bands(tuple(arr.shape)))
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputImageError(f"image is empty (shape {tuple(arr.shape)})")
        numeric = np.issubdtype(arr.dtype, np.number) or arr.dtype == bool
        if not numeric or np.issubdtype(arr.dtype, np.complexfloating):
            raise InputImageError(f"image data type {arr.dtype} is not numeric")
        self.array = arr
        self.bands = choose_bands(1 if arr.ndim == 2 else arr.shape[2], bands)
        self.scale = float(scale)
        self.input_shape = (int(arr.shape[0]), int(arr.shape[1]))
        if valid is not None and np.shape(valid) != self.input_shape:
            raise InputImageError(f"the valid-pixel mask is {np.shape(valid)}, the image {self.input_shape}")
        self.valid = None if valid is None else np.asarray(valid, bool)
        self.shape = tuple(max(1, int(round(n * self.scale))) for n in self.input_shape)
        self._lo, self._hi = self._stretch_limits(stretch)

    def _stretch_limits(self, percentiles):
        """Per-band limits mapped to 0 and 255: the full range for uint8, percentiles otherwise."""
        if self.array.dtype in (np.uint8, bool):
            return None, None
        step = max(1, int(np.ceil(np.sqrt(self.input_shape[0] * self.input_shape[1] / 1_000_000))))
        sample = np.asarray(self.array[::step, ::step], dtype=np.float64)
        if sample.ndim == 2:
            sample = sample[..., None]
        kept = None if self.valid is None else self.valid[::step, ::step].ravel()
        sample = sample[..., list(self.bands)].reshape(-1, 3)
        lo, hi = [], []
        for b in range(3):
            v = sample[:, b] if kept is None else sample[kept, b]
            v = v[np.isfinite(v)]
            if v.size == 0:
                raise InputImageError("image holds no finite values (all NaN or infinite)")
            a, z = np.percentile(v, percentiles)
            if z <= a:
                a, z = float(v.min()), float(v.max())
            lo.append(a)
            hi.append(z if z > a else a + 1.0)
        return np.array(lo, np.float32), np.array(hi, np.float32)

    def _to_uint8(self, window: np.ndarray) -> np.ndarray:
        window = window[..., None] if window.ndim == 2 else window
        rgb = window[..., list(self.bands)]
        if rgb.dtype == bool:
            return rgb.astype(np.uint8) * 255
        if self._lo is None:
            return np.ascontiguousarray(rgb)
        f = (rgb.astype(np.float32) - self._lo) * (255.0 / (self._hi - self._lo))
        return np.nan_to_num(np.clip(f, 0, 255), nan=0.0).astype(np.uint8)

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Window of the *input* grid as uint8 (h, w, 3), reflect-padded outside the image."""
        H, W = self.input_shape
        ys = _reflect_index(np.arange(y0, y0 + h), H)
        xs = _reflect_index(np.arange(x0, x0 + w), W)
        ya, yb = ys.min(), ys.max() + 1
        xa, xb = xs.min(), xs.max() + 1
        block = self._to_uint8(np.asarray(self.array[ya:yb, xa:xb]))
        return block[np.ix_(ys - ya, xs - xa)]

    def tile(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Window of the working (scaled) grid as uint8 (h, w, 3), bilinear from the input.

        Only the input rows and columns next to the tile's pixel centres are read, so a tile at
        ``scale`` 0.1 costs what its own pixels cost, not the 10× wider input window.
        """
        if self.scale == 1.0:
            return self.read(y0, x0, h, w)
        # Pixel centres of the scaled grid, in input coordinates, and their two neighbours.
        yy = (np.arange(y0, y0 + h) + 0.5) / self.scale - 0.5
        xx = (np.arange(x0, x0 + w) + 0.5) / self.scale - 0.5
        y_lo, x_lo = np.floor(yy).astype(np.int64), np.floor(xx).astype(np.int64)
        rows, cols = np.unique(np.r_[y_lo, y_lo + 1]), np.unique(np.r_[x_lo, x_lo + 1])
        block = self._gather(rows, cols).astype(np.float64)
        i0, i1 = np.searchsorted(rows, y_lo), np.searchsorted(rows, y_lo + 1)
        j0, j1 = np.searchsorted(cols, x_lo), np.searchsorted(cols, x_lo + 1)
        fy, fx = (yy - y_lo)[:, None, None], (xx - x_lo)[None, :, None]
        top = block[i0][:, j0] * (1 - fx) + block[i0][:, j1] * fx
        bottom = block[i1][:, j0] * (1 - fx) + block[i1][:, j1] * fx
        return np.clip(np.rint(top * (1 - fy) + bottom * fy), 0, 255).astype(np.uint8)

    def _gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The input pixels at sorted ``rows`` x ``cols`` (reflected into the image) as uint8 RGB."""
        H, W = self.input_shape
        ys, xs = _reflect_index(rows, H), _reflect_index(cols, W)
        if isinstance(self.array, np.ndarray):
            return self._to_uint8(self.array[np.ix_(ys, xs)])
        out = np.empty((len(ys), len(xs), 3), np.uint8)
        for i, y in enumerate(ys):  # a lazy array (dask, zarr...): one row at a time
            out[i] = self._to_uint8(np.asarray(self.array[int(y)])[xs])
        return out


def choose_bands(n_bands: int, bands: Sequence[int] | None = None) -> tuple[int, ...]:
    """The three bands (0-based) the model sees as R, G, B of an image with ``n_bands`` bands.

    Without a choice: bands 0, 1, 2, or band 0 as gray for fewer than three. One chosen band is
    used as gray.
    """
    if bands is None:
        return (0, 0, 0) if n_bands < 3 else (0, 1, 2)
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise InputImageError(f"choose 1 or 3 bands, got {bands}")
    bad = [b for b in bands if not 0 <= b < n_bands]
    if bad:
        raise InputImageError(f"band {bad[0]} does not exist: the image has {n_bands} band(s), "
                              f"numbered 0 to {n_bands - 1}")
    return bands * 3 if len(bands) == 1 else bands


def _too_many_bands(shape: tuple[int, ...]) -> str:
    """Why an (H, W, C) array with more than :data:`MAX_BANDS` channels and no band choice is refused:
    the bands must be chosen, unless its first axis is small enough to be the bands (then say so)."""
    text = f"image of shape {shape} has {shape[2]} bands: choose the 1 or 3 to use (--bands, e.g. 0,1,2)"
    if shape[0] <= MAX_BANDS:
        text += ", or, if its first axis holds the bands, put the bands last, (H, W, bands)"
    return text


def _reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Reflect indices into [0, n) (``numpy.pad``'s 'reflect'), repeating for pads larger than n."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx < n, idx, period - idx)

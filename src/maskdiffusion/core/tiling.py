"""Overlapping tiles over a large image and the blending of their scores (``docs/algorithm.md`` §3).

Tiles are laid row by row; a :class:`RowBlender` keeps only the rows that a later tile can still
touch, so memory stays at one band of tiles whatever the image height.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "tile_grid", "tile_starts", "padded_length", "blend_window", "RowBlender", "GridAccumulator"]

#: The UNet needs sides divisible by 64 (VAE factor 8 × three UNet downsamplings).
SIDE_MULTIPLE = 64
#: Image pixels per cell of the class-map grid (``docs/algorithm.md`` §2.4: maps live at S/16).
GRID_STRIDE = 16


@dataclass(frozen=True)
class Tile:
    """A window of the working image: origin (y, x) and the model-input size (h, w).

    ``h``/``w`` may reach past the image (reflect padding) when the image is smaller than a tile.
    """

    index: int
    row: int
    y: int
    x: int
    h: int
    w: int


def padded_length(n: int, multiple: int = SIDE_MULTIPLE) -> int:
    """``n`` rounded up to a multiple of ``multiple``."""
    return -(-n // multiple) * multiple


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every ``stride`` px, the last one flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Tiles covering ``shape`` in row-major order; sides shorter than a tile are padded to 64."""
    H, W = shape
    th, tw = min(tile, padded_length(H)), min(tile, padded_length(W))
    stride = tile - overlap
    tiles = []
    for r, y in enumerate(tile_starts(H, th, stride)):
        for x in tile_starts(W, tw, stride):
            tiles.append(Tile(len(tiles), r, y, x, th, tw))
    return tiles


def blend_window(h: int, w: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(h, w) float32 weights: 1 inside, a raised-cosine ramp over ``overlap`` px at each edge.

    Scores are divided by the summed weights, so the ramp only decides how neighbouring tiles
    hand over to each other; ``floor`` keeps weight at the image border where no neighbour is.
    """

    def ramp(n):
        r = np.ones(n, np.float32)
        m = min(overlap, n // 2)
        if m > 0:
            t = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m, dtype=np.float32) + 0.5) / m)
            r[:m] = np.maximum(t, floor)
            r[n - m :] = np.maximum(t[::-1], floor)
        return r

    return np.outer(ramp(h), ramp(w))


class RowBlender:
    """Weighted average of per-tile (K, h, w) scores, finalised band by band.

    Call :meth:`add` for the tiles of :func:`tile_grid` in order; rows no later tile reaches are
    passed to ``emit(y0, y1, scores)`` with (K, y1 - y0, W) blended scores, then forgotten.
    """

    def __init__(self, shape: tuple[int, int], n_channels: int, tile: int, overlap: int,
                 emit: Callable[[int, int, np.ndarray], None]):
        self.H, self.W = shape
        self.emit = emit
        self.overlap = overlap
        rows = min(tile, padded_length(self.H))
        self.acc = np.zeros((n_channels, rows, self.W), np.float32)
        self.weight = np.zeros((rows, self.W), np.float32)
        self.y0 = 0
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    def _window(self, h, w):
        if (h, w) not in self._windows:
            self._windows[(h, w)] = blend_window(h, w, self.overlap)
        return self._windows[(h, w)]

    def add(self, tile: Tile, scores: np.ndarray) -> None:
        """Blend (K, tile.h, tile.w) scores of ``tile``; the part past the image is dropped."""
        if tile.y > self.y0:
            self._flush(tile.y)
        h = min(tile.h, self.H - tile.y)
        w = min(tile.w, self.W - tile.x)
        win = self._window(tile.h, tile.w)[:h, :w]
        r0 = tile.y - self.y0
        self.acc[:, r0 : r0 + h, tile.x : tile.x + w] += scores[:, :h, :w] * win
        self.weight[r0 : r0 + h, tile.x : tile.x + w] += win

    def _flush(self, until: int) -> None:
        n = min(until, self.H) - self.y0
        if n <= 0:
            return
        self.emit(self.y0, self.y0 + n, self.acc[:, :n] / np.maximum(self.weight[:n], 1e-12))
        self.acc = np.roll(self.acc, -n, axis=1)
        self.weight = np.roll(self.weight, -n, axis=0)
        self.acc[:, -n:] = 0
        self.weight[-n:] = 0
        self.y0 += n

    def finish(self) -> None:
        """Emit every remaining row."""
        while self.y0 < self.H:
            self._flush(min(self.H, self.y0 + self.acc.shape[1]))


class GridAccumulator:
    """Average of per-tile maps on the coarse grid (one cell = ``GRID_STRIDE`` px) of the image."""

    def __init__(self, shape: tuple[int, int], n_channels: int, stride: int = GRID_STRIDE):
        self.stride = stride
        self.gh, self.gw = -(-shape[0] // stride), -(-shape[1] // stride)
        self.sum = np.zeros((n_channels, self.gh, self.gw), np.float32)
        self.count = np.zeros((self.gh, self.gw), np.float32)

    def add(self, tile: Tile, grid_maps: np.ndarray, overlap: int | None = None) -> None:
        """Add a tile's (C, h, w) maps; with ``overlap``, weighted by :func:`blend_window` at the
        cell centres, as the pixel blending weighs them."""
        gy, gx = int(round(tile.y / self.stride)), int(round(tile.x / self.stride))
        h = min(grid_maps.shape[1], self.gh - gy)
        w = min(grid_maps.shape[2], self.gw - gx)
        weight = np.ones((h, w), np.float32)
        if overlap is not None:
            centres = slice(self.stride // 2, None, self.stride)
            weight = blend_window(tile.h, tile.w, overlap)[centres, centres][:h, :w]
        self.sum[:, gy : gy + h, gx : gx + w] += grid_maps[:, :h, :w] * weight
        self.count[gy : gy + h, gx : gx + w] += weight

    def result(self) -> np.ndarray:
        return self.sum / np.where(self.count > 0, self.count, 1)


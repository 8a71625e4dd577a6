import numpy as np
import pytest

from maskdiffusion.core.tiling import GridAccumulator, RowBlender, blend_window, tile_grid, tile_starts


def test_tile_starts_cover_the_axis_and_end_flush():
    assert tile_starts(512, 512, 448) == [0]
    assert tile_starts(100, 512, 448) == [0]
    assert tile_starts(1000, 512, 448) == [0, 448, 488]
    starts = tile_starts(6000, 512, 448)
    assert starts[-1] == 6000 - 512 and all(b - a <= 448 for a, b in zip(starts, starts[1:]))


def test_small_and_odd_images_are_padded_to_64_not_squashed():
    (t,) = tile_grid((1, 1), 512, 64)
    assert (t.h, t.w) == (64, 64)
    tiles = tile_grid((100, 1000), 512, 64)
    assert {(t.h, t.w) for t in tiles} == {(128, 512)}
    assert [t.x for t in tiles] == [0, 448, 488]


def test_blend_window_is_one_inside_and_positive_everywhere():
    w = blend_window(64, 64, 16)
    assert w[32, 32] == 1.0 and w.min() > 0 and w[0, 0] < 0.01
    assert np.allclose(w, w[::-1, ::-1])


@pytest.mark.parametrize("shape", [(1000, 700), (300, 300), (64, 2000)])
def test_blending_reproduces_scores_that_do_not_depend_on_the_tiling(shape):
    """Where every tile sees the same score field, the blended field equals it exactly."""
    H, W = shape
    yy, xx = np.mgrid[0:H + 512, 0:W + 512].astype(np.float32)
    field = np.stack([np.sin(yy / 37.0) + xx / 500.0, np.cos(xx / 23.0) - yy / 700.0])
    out = np.zeros((2, H, W), np.float32)
    emitted = []

    def emit(y0, y1, s):
        emitted.append((y0, y1))
        out[:, y0:y1] = s

    tiles = tile_grid(shape, 256, 64)
    blender = RowBlender(shape, 2, 256, 64, emit)
    for t in tiles:
        blender.add(t, field[:, t.y : t.y + t.h, t.x : t.x + t.w])
    blender.finish()
    assert np.allclose(out, field[:, :H, :W], atol=1e-5)
    assert emitted[0][0] == 0 and emitted[-1][1] == H
    assert all(a[1] == b[0] for a, b in zip(emitted, emitted[1:]))


def test_row_blender_memory_is_one_band_of_tiles():
    blender = RowBlender((20_000, 300), 3, 512, 64, lambda *a: None)
    assert blender.acc.shape == (3, 512, 300)


def test_grid_accumulator_averages_overlaps():
    tiles = tile_grid((64, 96), 64, 32)
    acc = GridAccumulator((64, 96), 1)
    for t in tiles:
        acc.add(t, np.full((1, 4, 4), float(t.index)))
    r = acc.result()
    assert r.shape == (1, 4, 6)
    assert r[0, 0, 0] == 0 and r[0, 0, 5] == 1 and r[0, 0, 2] == 0.5

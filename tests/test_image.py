import numpy as np
import pytest

from maskdiffusion.core.image import ImageSource, InputImageError


def test_uint8_rgb_is_read_as_is_and_reflect_padded():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    src = ImageSource(img)
    assert src.shape == (5, 7)
    assert np.array_equal(src.tile(0, 0, 5, 7), img)
    t = src.tile(0, 0, 8, 8)
    assert t.shape == (8, 8, 3)
    assert np.array_equal(t[5, :7], img[3]) and np.array_equal(t[:5, 7], img[:, 5])


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 3), (3, 1)])
def test_tiny_images_pad_without_error(shape):
    img = np.full(shape, 200, np.uint8)
    t = ImageSource(img).tile(0, 0, 64, 64)
    assert t.shape == (64, 64, 3) and (t == 200).all()


def test_gray_rgba_and_band_choice():
    gray = np.full((4, 4), 9, np.uint8)
    assert (ImageSource(gray).tile(0, 0, 4, 4) == 9).all()
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    assert (ImageSource(rgba).tile(0, 0, 4, 4) == 0).all()
    rgbir = np.stack([np.full((4, 4), v, np.uint8) for v in (1, 2, 3, 4)], -1)
    assert ImageSource(rgbir, bands=(3, 0, 1)).tile(0, 0, 1, 1)[0, 0].tolist() == [4, 1, 2]
    with pytest.raises(InputImageError, match="band 7 does not exist"):
        ImageSource(rgbir, bands=(7, 0, 1))


def test_uint16_and_float_are_percentile_stretched():
    rng = np.random.default_rng(0)
    img16 = (rng.random((50, 50, 3)) * 4000 + 1000).astype(np.uint16)
    t = ImageSource(img16).tile(0, 0, 50, 50)
    assert t.dtype == np.uint8 and t.min() == 0 and t.max() == 255
    f = rng.random((20, 20)).astype(np.float32)
    f[0, 0] = np.nan
    t = ImageSource(f).tile(0, 0, 20, 20)
    assert t.dtype == np.uint8 and t[0, 0, 0] == 0 and t.max() == 255


@pytest.mark.parametrize("bad, message", [
    (np.zeros((0, 5), np.uint8), "empty"),
    (np.zeros((2, 2, 2, 2), np.uint8), "shape"),
    (np.zeros((3, 3, 100), np.uint8), "has 100 bands: choose the 1 or 3 to use .* put the bands last"),
    (np.zeros((100, 100, 65), np.uint8), r"has 65 bands: choose the 1 or 3 to use \(--bands, e.g. 0,1,2\)$"),
    (np.array([["a"]]), "not numeric"),
    (np.full((4, 4), np.nan, np.float32), "no finite values"),
])
def test_bad_images_have_one_clear_message(bad, message):
    with pytest.raises(InputImageError, match=message):
        ImageSource(bad)


def test_scale_resamples_tiles_lazily():
    img = np.zeros((100, 60, 3), np.uint8)
    img[:, 30:] = 255
    src = ImageSource(img, scale=2.0)
    assert src.shape == (200, 120)
    t = src.tile(0, 0, 200, 120)
    assert t[0, 0, 0] == 0 and t[0, 119, 0] == 255 and t[0, 58, 0] == 0 and t[0, 61, 0] == 255
    assert t[0, 59, 0] == 64  # bilinear: 29.25 between 0 and 255


def test_a_tile_at_a_small_scale_costs_its_own_pixels_not_the_window():
    """Item 7: at scale 0.1 a 256² tile covers a 2560² input window; only the input pixels next
    to the tile's pixel centres are read (no uint8 and float copies of the whole window)."""
    import tracemalloc

    img = np.random.default_rng(0).integers(0, 256, (4000, 4000, 3), dtype=np.uint8)
    src = ImageSource(img, scale=0.1)
    tracemalloc.start()
    tile = src.tile(0, 0, 256, 256)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert tile.shape == (256, 256, 3)
    window = 2560 * 2560 * 3
    assert peak < window, f"{peak / 2**20:.1f} MB for a tile of {tile.nbytes / 2**20:.1f} MB"

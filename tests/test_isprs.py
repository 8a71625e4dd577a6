"""ISPRS colour codes, the Potsdam-3 merge, tile ids and the synthetic Potsdam-like tiles."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from maskdiffusion.core.classes import preset_classes
from maskdiffusion.geo.isprs import (
    ISPRS_COLORS,
    POTSDAM6_TO_3,
    boundary_mask,
    decode_isprs_labels,
    encode_isprs_labels,
    map_labels,
    tile_id,
)
from maskdiffusion.geo.raster_io import read_image
from maskdiffusion.geo.synthetic import make_potsdam_like_tile
from potsdam_fixture import TILE_SIZE


def test_isprs_colours_are_the_potsdam_codes():
    assert ISPRS_COLORS == {
        "impervious surfaces": (255, 255, 255),
        "building": (0, 0, 255),
        "low vegetation": (0, 255, 255),
        "tree": (0, 255, 0),
        "car": (255, 255, 0),
        "clutter": (255, 0, 0),
    }


def test_encode_decode_round_trip_with_ignore():
    index = np.array([[0, 1, 2], [3, 4, 5], [-1, 0, 5]], dtype=np.int16)
    rgb = encode_isprs_labels(index)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 3, 3)
    assert tuple(rgb[0, 1]) == (0, 0, 255) and tuple(rgb[2, 0]) == (0, 0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back, n_off = decode_isprs_labels(rgb)
    assert back.dtype == np.int16 and n_off == 0
    np.testing.assert_array_equal(back, index)


def test_off_palette_pixels_are_ignored_counted_and_warned():
    rgb = encode_isprs_labels(np.zeros((4, 5), dtype=np.int16))
    rgb[0, 0] = (254, 255, 255)
    rgb[1, 2] = (10, 20, 30)
    rgb[3, 4] = (0, 0, 0)
    with pytest.warns(UserWarning, match="2 label pixels"):
        index, n_off = decode_isprs_labels(rgb)
    assert n_off == 2
    assert index[0, 0] == index[1, 2] == index[3, 4] == -1
    assert (index >= 0).sum() == 17


def test_no_boundary_label_black_band_is_ignore(potsdam_tile):
    full, _ = read_image(potsdam_tile["label"])
    nob, _ = read_image(potsdam_tile["label_no_boundary"])
    full_index, _ = decode_isprs_labels(full)
    nob_index, n_off = decode_isprs_labels(nob)
    assert n_off == 0 and (full_index >= 0).all()
    ignored = nob_index == -1
    np.testing.assert_array_equal(ignored, boundary_mask(full_index, 3))
    assert 0 < ignored.mean() < 0.25
    np.testing.assert_array_equal(nob_index[~ignored], full_index[~ignored])


def test_potsdam6_to_3_follows_the_preset_names():
    six = [c.name for c in preset_classes("potsdam6")]
    three = [c.name for c in preset_classes("potsdam3")]
    merged = {name: three[POTSDAM6_TO_3[i]] for i, name in enumerate(six)}
    assert merged == {
        "impervious surfaces": "roads and cars",
        "car": "roads and cars",
        "building": "buildings and clutter",
        "clutter": "buildings and clutter",
        "low vegetation": "vegetation",
        "tree": "vegetation",
    }
    np.testing.assert_array_equal(map_labels(np.array([[-1, 4, 5, 3]]), POTSDAM6_TO_3), [[-1, 0, 1, 2]])


def test_boundary_mask_width():
    labels = np.zeros((10, 10), dtype=np.int16)
    labels[:, 5:] = 1
    for width in (1, 2, 3, 4):
        assert boundary_mask(labels, width).any(axis=0).sum() == width
    assert not boundary_mask(labels, 0).any()


@pytest.mark.parametrize(
    "name, expected",
    [
        ("top_potsdam_2_10_RGBIR.tif", "2_10"),
        ("top_potsdam_2_10_label_noBoundary.tif", "2_10"),
        ("potsdam_2_10_label.tif", "2_10"),
        ("/data/out/top_potsdam_7_13_RGB_seg.tif", "7_13"),
        ("frankfurt_000001_gt.png", "frankfurt_000001"),
        ("img01_pred.tif", "img01"),
        ("img01.png", "img01"),
    ],
)
def test_tile_id(name, expected):
    assert tile_id(name) == expected


def test_synthetic_tile_is_deterministic_and_urban():
    image, labels = make_potsdam_like_tile(512, seed=0)
    again, labels_again = make_potsdam_like_tile(512, seed=0)
    other, _ = make_potsdam_like_tile(512, seed=1)
    assert image.shape == (512, 512, 4) and image.dtype == np.uint8 and labels.shape == (512, 512)
    np.testing.assert_array_equal(image, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(image, other)
    assert set(np.unique(labels)) == set(range(6))
    means = np.array([image[labels == k].mean(axis=0) for k in range(6)])
    assert means[2, 3] > means[0, 3] and means[3, 3] > means[1, 3]
    assert means[1, 0] > means[1, 2]
    assert means[3, 1] < means[2, 1]
    assert (labels == 0).mean() > 0.1 and (labels == 1).mean() > 0.05


def test_synthetic_files_follow_isprs_naming(potsdam_tile):
    assert potsdam_tile["image"].name == "top_potsdam_2_10_RGBIR.tif"
    assert potsdam_tile["world_file"].name == "top_potsdam_2_10_RGBIR.tfw"
    assert potsdam_tile["label"].name == "potsdam_2_10_label.tif"
    assert potsdam_tile["label_no_boundary"].name == "potsdam_2_10_label_noBoundary.tif"
    lines = potsdam_tile["world_file"].read_text().split()
    assert [float(v) for v in lines] == pytest.approx([0.05, 0, 0, -0.05, 366000.025, 5807999.975])
    rgb, _ = read_image(potsdam_tile["label"])
    index, _ = decode_isprs_labels(rgb)
    np.testing.assert_array_equal(index, make_potsdam_like_tile(TILE_SIZE, seed=0)[1])

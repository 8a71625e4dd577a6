"""Raster reading and writing: georeference, band choice, label files, atomic writes, broken files."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import rasterio
from PIL import Image

from maskdiffusion.core.classes import ClassSpec, preset_classes
from maskdiffusion.geo.atomic import atomic_output
from maskdiffusion.geo.isprs import decode_isprs_labels
from maskdiffusion.geo.raster_io import (
    GeoInfo,
    ImageReadError,
    image_info,
    read_image,
    read_window,
    sidecar_path,
    write_isprs_rgb,
    write_labels,
    write_raster,
    write_sidecar,
)
from maskdiffusion.geo.synthetic import make_potsdam_like_tile
from potsdam_fixture import TILE_SIZE

POTSDAM_TRANSFORM = (0.05, 0.0, 366000.0, 0.0, -0.05, 5808000.0)
UTM33 = GeoInfo("EPSG:32633", POTSDAM_TRANSFORM)


@pytest.fixture
def labels():
    """A label map of the six Potsdam classes (values 1-6) with some unlabelled pixels (0)."""
    return np.random.default_rng(1).integers(0, 7, (70, 90)).astype(np.uint8)


def read_potsdam(path, bands=None):
    with pytest.warns(UserWarning, match="assuming EPSG:32633"):
        return read_image(path, bands)


def test_potsdam_tile_is_read_with_world_file_georeference(potsdam_tile):
    image, geo = read_potsdam(potsdam_tile["image"])
    assert image.shape == (TILE_SIZE, TILE_SIZE, 4) and image.dtype == np.uint8
    assert geo.crs == "EPSG:32633"
    assert geo.transform == pytest.approx(POTSDAM_TRANSFORM, abs=1e-9)
    assert geo.pixel_size == pytest.approx(0.05)
    assert geo.band_names == ("R", "G", "B", "IR")
    assert geo.source == str(potsdam_tile["image"])
    expected, _ = make_potsdam_like_tile(TILE_SIZE, seed=0)
    np.testing.assert_array_equal(image, expected)


def test_band_choice_rgb_and_irrg(potsdam_tile):
    image, _ = read_potsdam(potsdam_tile["image"])
    rgb, geo_rgb = read_potsdam(potsdam_tile["image"], bands=(0, 1, 2))
    irrg, geo_irrg = read_potsdam(potsdam_tile["image"], bands=(3, 0, 1))
    np.testing.assert_array_equal(rgb, image[..., :3])
    np.testing.assert_array_equal(irrg, image[..., [3, 0, 1]])
    assert geo_rgb.band_names == ("R", "G", "B")
    assert geo_irrg.band_names == ("IR", "R", "G")
    one, _ = read_potsdam(potsdam_tile["image"], bands=[3])
    assert one.shape == (TILE_SIZE, TILE_SIZE)
    with pytest.raises(ImageReadError, match="band 4 requested but the image has 4 bands"):
        read_image(potsdam_tile["image"], bands=(4,))


def test_read_window_matches_the_full_read(potsdam_tile):
    image, _ = read_potsdam(potsdam_tile["image"])
    window = read_window(potsdam_tile["image"], (10, 20, 30, 40), bands=(0, 1, 2))
    np.testing.assert_array_equal(window, image[10:40, 20:60, :3])
    with pytest.raises(ValueError, match="not inside"):
        read_window(potsdam_tile["image"], (TILE_SIZE - 5, 0, 10, 10))


def test_image_info_reads_no_pixels(potsdam_tile):
    with pytest.warns(UserWarning, match="EPSG:32633"):
        info = image_info(potsdam_tile["image"])
    assert (info.height, info.width, info.count, info.dtype) == (TILE_SIZE, TILE_SIZE, 4, np.uint8)
    assert info.geo.crs == "EPSG:32633"


def test_unreferenced_label_has_no_geo(potsdam_tile):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb, geo = read_image(potsdam_tile["label"])
    assert rgb.shape == (TILE_SIZE, TILE_SIZE, 3)
    assert geo.crs is None and geo.transform is None and geo.pixel_size is None


def test_write_labels_geotiff_keeps_georeference_colours_and_names(tmp_path, labels):
    classes = preset_classes("potsdam6")
    out = write_labels(tmp_path / "seg.tif", labels, classes, UTM33, metadata={"model": "tiny"})
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == POTSDAM_TRANSFORM
        assert src.dtypes[0] == "uint8"
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name == "deflate"
        assert src.nodata == 0
        cmap = src.colormap(1)
        assert cmap[0][3] == 0, "unlabelled is transparent"
        assert [cmap[k][:3] for k in range(1, 7)] == [c.color for c in classes]
        assert all(cmap[k][3] == 255 for k in range(1, 7))
        tags = src.tags()
        assert json.loads(tags["CLASSES"]) == [c.name for c in classes]
        assert tags["CLASS_2"] == "building"
        values = {"0": "unlabelled", **{str(k): c.name for k, c in enumerate(classes, start=1)}}
        assert json.loads(tags["LABEL_VALUES"]) == values
        assert json.loads(tags["MASKDIFFUSION_METADATA"]) == {"model": "tiny", "label_values": values}
        assert "0=unlabelled" in src.descriptions[0] and "1=impervious surfaces" in src.descriptions[0]
    back, geo = read_image(out)
    np.testing.assert_array_equal(back, labels)
    assert geo.crs == "EPSG:32633" and geo.transform == POTSDAM_TRANSFORM
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.tif"]


def test_write_labels_png_palette_round_trip(tmp_path, labels):
    classes = [ClassSpec("road", color=(128, 64, 128)), ClassSpec("tree", color=(0, 200, 0)), "house", "a", "b", "c"]
    out = write_labels(tmp_path / "seg.png", labels, classes)
    back, geo = read_image(out)
    np.testing.assert_array_equal(back, labels)
    assert geo.transform is None
    with Image.open(out) as im:
        assert im.mode == "P"
        assert im.getpalette()[:9] == [0, 0, 0, 128, 64, 128, 0, 200, 0]
        assert im.info["transparency"] == 0, "palette entry 0 (unlabelled) is the transparent one"
        assert json.loads(im.info["CLASSES"])[:3] == ["road", "tree", "house"]


def test_many_classes_give_uint16_tiff_and_refuse_png(tmp_path):
    classes = [f"c{i}" for i in range(300)]
    labels = np.arange(300 * 4, dtype=np.int32).reshape(30, 40) % 301  # 0 (unlabelled) to 300
    out = write_labels(tmp_path / "many.tif", labels, classes)
    back, _ = read_image(out)
    assert back.dtype == np.uint16 and back.max() == 300
    np.testing.assert_array_equal(back, labels)
    with rasterio.open(out) as src:
        assert src.nodata == 0
    with pytest.raises(ValueError, match="at most 255 classes"):
        write_labels(tmp_path / "many.png", labels, classes)


def test_write_labels_rejects_bad_input(tmp_path, labels):
    with pytest.raises(ValueError, match=r"\.tif, \.tiff, \.png"):
        write_labels(tmp_path / "seg.jp2", labels, [f"c{i}" for i in range(6)])
    with pytest.raises(ValueError, match=r"0 \(unlabelled\) to 3"):
        write_labels(tmp_path / "seg.tif", labels, ["a", "b", "c"])
    with pytest.raises(ValueError, match="integers"):
        write_labels(tmp_path / "seg.tif", labels.astype(np.float32), [f"c{i}" for i in range(6)])
    with pytest.raises(ValueError, match="2-D"):
        write_labels(tmp_path / "seg.tif", labels[None], [f"c{i}" for i in range(6)])
    assert not list(tmp_path.iterdir())


def test_isprs_rgb_round_trip(tmp_path, labels):
    out = write_isprs_rgb(tmp_path / "rgb.tif", labels, preset_classes("potsdam6"), UTM33)
    rgb, geo = read_image(out)
    assert rgb.shape == (*labels.shape, 3) and geo.crs == "EPSG:32633"
    index, n_off = decode_isprs_labels(rgb)
    np.testing.assert_array_equal(index, labels.astype(np.int16) - 1)  # class index, -1 where unlabelled (black)
    assert (rgb[labels == 0] == 0).all() and n_off == 0


def test_16bit_and_float_rasters_keep_their_type(tmp_path):
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65535, (3, 40, 50), dtype=np.uint16)
    f32 = rng.random((40, 50), dtype=np.float32)
    write_raster(tmp_path / "u16.tif", u16, UTM33)
    write_raster(tmp_path / "conf.tif", f32, UTM33, nodata=-1.0)
    image, geo = read_image(tmp_path / "u16.tif")
    assert image.dtype == np.uint16 and image.shape == (40, 50, 3)
    np.testing.assert_array_equal(image, np.moveaxis(u16, 0, -1))
    assert geo.transform == POTSDAM_TRANSFORM
    conf, _ = read_image(tmp_path / "conf.tif")
    assert conf.dtype == np.float32
    np.testing.assert_array_equal(conf, f32)
    with rasterio.open(tmp_path / "conf.tif") as src:
        assert src.nodata == -1.0
    with pytest.raises(ValueError, match=r"\.tif, \.tiff"):
        write_raster(tmp_path / "conf.png", f32)


def test_rgb_png_and_jpeg_are_read(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb).save(tmp_path / "photo.jpg")
    image, geo = read_image(tmp_path / "photo.png")
    np.testing.assert_array_equal(image, rgb)
    assert geo.band_names == ("R", "G", "B") and geo.crs is None and geo.transform is None
    jpeg, _ = read_image(tmp_path / "photo.jpg")
    assert jpeg.shape == (20, 30, 3) and jpeg.dtype == np.uint8


def test_prj_beside_the_file_gives_the_crs(tmp_path, potsdam_tile):
    image, _ = read_potsdam(potsdam_tile["image"])
    tif = tmp_path / "scene.tif"
    tif.write_bytes(potsdam_tile["image"].read_bytes())
    (tmp_path / "scene.tfw").write_bytes(potsdam_tile["world_file"].read_bytes())
    (tmp_path / "scene.prj").write_text(rasterio.crs.CRS.from_epsg(25833).to_wkt(version="WKT1_ESRI"))
    _, geo = read_image(tif)
    assert geo.crs == "EPSG:25833"
    assert geo.transform == pytest.approx(POTSDAM_TRANSFORM, abs=1e-9)


def test_broken_files_raise_one_clear_error(tmp_path):
    missing = tmp_path / "missing.tif"
    with pytest.raises(ImageReadError, match="missing.tif: no such file"):
        read_image(missing)
    text = tmp_path / "notes.tif"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.tif: not an image"):
        read_image(text)
    whole = tmp_path / "whole.tif"
    with rasterio.open(whole, "w", driver="GTiff", width=200, height=200, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=rasterio.Affine(*POTSDAM_TRANSFORM)) as dst:
        dst.write(np.full((3, 200, 200), 7, np.uint8))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ImageReadError, match="truncated.tif: truncated or corrupt"):
        read_image(truncated)
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)


def test_atomic_output_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".txt"
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_output(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_failing_raster_write_leaves_old_file_untouched(tmp_path, labels, monkeypatch):
    classes = preset_classes("potsdam6")
    target = write_labels(tmp_path / "seg.tif", labels, classes, UTM33)
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rasterio.io.DatasetWriter, "write_colormap", fail)
    with pytest.raises(OSError, match="disk full"):
        write_labels(target, np.zeros_like(labels), classes, UTM33)
    with pytest.raises(OSError, match="disk full"):
        write_labels(tmp_path / "new.tif", labels, classes)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.tif"]


def test_sidecar_and_geoinfo_are_json(tmp_path):
    out = tmp_path / "seg.tif"
    assert sidecar_path(out) == tmp_path / "seg.classes.json"
    geo = GeoInfo("EPSG:32633", POTSDAM_TRANSFORM, "a.tif", ("R", "G", "B"))
    meta = {"geo": geo.to_dict(), "score": np.float32(0.5), "missing": math.nan, "ids": np.arange(3)}
    path = write_sidecar(out, meta)
    data = json.loads(path.read_text())
    assert data["score"] == 0.5 and data["missing"] is None and data["ids"] == [0, 1, 2]
    assert GeoInfo.from_dict(data["geo"]) == geo

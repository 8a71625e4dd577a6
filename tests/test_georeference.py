"""What the input says besides its pixels reaches every output: nodata pixels stay unlabelled,
ground control points are written through, a palette image is read as its colours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.features import rasterize

from maskdiffusion.cli import main
from maskdiffusion.geo.exports import rle_decode
from maskdiffusion.geo.raster_io import read_image

SAMPLE = Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif"


def run(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture
def image(tmp_path) -> Path:
    return Path(shutil.copy(SAMPLE, tmp_path / "neon.tif"))


def _nodata_of(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return (src.read() == src.nodata).all(axis=0)


def test_nodata_pixels_are_unlabelled_in_every_output(image, tmp_path, tiny_model_dir):
    """Item 3: the NEON sample's nodata (255) pixels: label 0 (nodata 0), confidence NaN (nodata
    NaN), scores NaN, no polygon, no COCO pixel."""
    nodata = _nodata_of(image)
    assert nodata.sum() > 100
    out = tmp_path / "seg.tif"
    assert run("segment", image, "--classes", "tree,sand", "--model", tiny_model_dir, "--out", out, "--quiet",
               "--confidence", tmp_path / "conf.tif", "--scores", tmp_path / "scores.npy",
               "--polygons", tmp_path / "seg.geojson", "--coco", tmp_path / "seg.json") == 0
    with rasterio.open(out) as src:
        labels = src.read(1)
        assert src.nodata == 0
    assert (labels[nodata] == 0).all() and (labels[~nodata] > 0).all()
    with rasterio.open(tmp_path / "conf.tif") as src:
        confidence = src.read(1)
        assert np.isnan(src.nodata)
    assert np.isnan(confidence[nodata]).all() and np.isfinite(confidence[~nodata]).all()
    scores = np.load(tmp_path / "scores.npy")
    assert np.isnan(scores[:, nodata]).all() and np.isfinite(scores[:, ~nodata]).all()
    with rasterio.open(image) as src:
        transform = src.transform
    features = json.loads((tmp_path / "seg.geojson").read_text())["features"]
    covered = rasterize([(f["geometry"], 1) for f in features], out_shape=labels.shape, transform=transform)
    assert not covered[nodata].any() and covered[~nodata].all()
    coco = json.loads((tmp_path / "seg.json").read_text())
    masks = [rle_decode(a["segmentation"]) for a in coco["annotations"]]
    assert not any(m[nodata].any() for m in masks)
    meta = json.loads((tmp_path / "seg.classes.json").read_text())
    assert meta["georeference"]["nodata"] == 255


def test_read_image_reports_the_nodata_value(image):
    from maskdiffusion.geo.raster_io import read_input

    _, geo = read_image(image)
    assert geo.nodata == 255
    _, geo, valid = read_input(image)
    assert np.array_equal(valid, ~_nodata_of(image))


def _gcp_only(image: Path, path: Path, n_points: int) -> Path:
    """``image`` georeferenced by ``n_points`` ground control points instead of its transform."""
    with rasterio.open(image) as src:
        data, profile, t = src.read(), src.profile, src.transform
    corners = [(0, 0), (0, 400), (400, 0), (400, 400)][:n_points]
    gcps = [GroundControlPoint(r, c, *(t @ (c, r))) for r, c in corners]
    profile.pop("transform")
    with rasterio.open(path, "w", **{**profile, "crs": None}) as dst:
        dst.write(data)
        dst.gcps = (gcps, profile["crs"])
    return path


def test_ground_control_points_are_written_through(image, tmp_path, tiny_model_dir, capsys):
    """Item 3: labels and confidence keep the GCPs and their CRS; polygons are placed with the
    transform fitted to the GCPs, as one line on stderr says."""
    gcp_image = _gcp_only(image, tmp_path / "gcp.tif", 4)
    with rasterio.open(image) as src:
        crs, transform = src.crs, src.transform
    assert run("segment", gcp_image, "--classes", "tree,sand", "--model", tiny_model_dir, "--out", tmp_path / "s.tif",
               "--confidence", tmp_path / "c.tif", "--polygons", tmp_path / "s.geojson", "--quiet") == 0
    for name in ("s.tif", "c.tif"):
        with rasterio.open(tmp_path / name) as src:
            points, points_crs = src.gcps
            assert len(points) == 4 and points_crs == crs, name
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: gcp.tif: polygons are placed with the affine transform fitted to the image's 4 ground "
                   "control points (the label rasters keep the points themselves)"]
    features = json.loads((tmp_path / "s.geojson").read_text())["features"]
    xs = [x for f in features for ring in f["geometry"]["coordinates"] for x, _ in ring]
    assert min(xs) == pytest.approx(transform.c) and max(xs) == pytest.approx(transform.c + 400 * transform.a)


def test_too_few_ground_control_points_are_said_in_one_line(image, tmp_path, tiny_model_dir, capsys):
    gcp_image = _gcp_only(image, tmp_path / "gcp.tif", 2)
    assert run("segment", gcp_image, "--classes", "tree,sand", "--model", tiny_model_dir, "--out", tmp_path / "s.tif",
               "--polygons", tmp_path / "s.gpkg", "--quiet") == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "note: gcp.tif: polygons are in pixel coordinates: the image has 2 ground control point(s), at least 3 are "
        "needed to fit a transform"]


def test_a_palette_image_is_segmented_as_its_colours(tmp_path, tiny_model_dir):
    """Item 6: a palette PNG gives the labels of the same picture saved as RGB; our own palette
    label maps are still read as their values."""
    from maskdiffusion.geo.raster_io import read_input

    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    index = rng.integers(0, 16, (256, 256), dtype=np.uint8)
    picture = Image.fromarray(index, mode="P")
    picture.putpalette(palette.ravel().tolist())
    picture.save(tmp_path / "palette.png")
    Image.fromarray(palette[index]).save(tmp_path / "rgb.png")
    rgb, geo, _ = read_input(tmp_path / "palette.png")
    assert rgb.shape == (256, 256, 3) and np.array_equal(rgb, palette[index]) and geo.band_names == ("R", "G", "B")
    common = ["--classes", "road,tree", "--model", tiny_model_dir, "--tile-size", 256, "--quiet"]
    assert run("segment", tmp_path / "palette.png", "--out", tmp_path / "a.tif", *common) == 0
    assert run("segment", tmp_path / "rgb.png", "--out", tmp_path / "b.tif", *common) == 0
    assert np.array_equal(read_image(tmp_path / "a.tif")[0], read_image(tmp_path / "b.tif")[0])
    assert run("segment", tmp_path / "rgb.png", "--out", tmp_path / "labels.png", *common) == 0
    values, _ = read_image(tmp_path / "labels.png")
    assert values.ndim == 2 and set(np.unique(values)) <= {1, 2}


def test_scribbles_leave_nodata_pixels_unlabelled(image, tmp_path, tiny_model_dir):
    """Refinement from strokes reassigns every pixel without a stroke, but not nodata ones."""
    from maskdiffusion.geo.raster_io import write_raster

    nodata = _nodata_of(image)
    strokes = np.zeros((400, 400), np.uint8)
    strokes[100:140, 50:300] = 2
    write_raster(tmp_path / "strokes.tif", strokes)
    assert run("segment", image, "--classes", "tree,sand", "--model", tiny_model_dir, "--quiet", "--scribbles",
               tmp_path / "strokes.tif", "--out", tmp_path / "seg.tif", "--confidence", tmp_path / "conf.tif") == 0
    labels, _ = read_image(tmp_path / "seg.tif")
    confidence, _ = read_image(tmp_path / "conf.tif")
    assert (labels[nodata & (strokes == 0)] == 0).all() and (labels[~nodata] > 0).all()
    assert np.isnan(confidence[nodata & (strokes == 0)]).all()

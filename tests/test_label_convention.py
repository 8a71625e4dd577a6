"""One label convention on every face (``maskdiffusion.core.labels``): 0 = unlabelled, value k =
the k-th class (1-based, in the order given); uint8 up to 255 classes, uint16 above."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from maskdiffusion import segment
from maskdiffusion.cli import main
from maskdiffusion.core.labels import UNLABELLED, label_dtype
from maskdiffusion.geo.raster_io import GeoInfo, read_image, write_labels, write_sidecar
from maskdiffusion.model.loading import load_model
from maskdiffusion.session import Session
from maskdiffusion.session_bundle import load_session, save_session

SAMPLE = Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif"
CLASSES = ["tree", "shrub", "sand"]
VALUES = {"0": "unlabelled", "1": "tree", "2": "shrub", "3": "sand"}
GEO = GeoInfo("EPSG:32617", (1.0, 0.0, 400000.0, 0.0, -1.0, 3300000.0))


@pytest.fixture(scope="module")
def sd(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


@pytest.fixture
def image(tmp_path) -> Path:
    return Path(shutil.copy(SAMPLE, tmp_path / "neon.tif"))


def run(*args) -> int:
    return main([str(a) for a in args])


def test_engine_result_holds_values_1_to_k_and_names_them(sd):
    pixels, _ = read_image(SAMPLE)
    r = segment(pixels, CLASSES, sd, tile_size=256, return_scores=True)
    assert r.labels.dtype == np.uint8 and r.labels.shape == (400, 400)
    assert set(np.unique(r.labels)) <= {1, 2, 3} and UNLABELLED not in r.labels, "a normal image has no 0"
    assert np.array_equal(r.labels, r.scores.argmax(0) + 1), "value k is the class whose score is best"
    meta = r.metadata()
    assert meta["label_values"] == VALUES
    assert [(c["value"], c["name"]) for c in meta["classes"]] == [(1, "tree"), (2, "shrub"), (3, "sand")]


def test_cli_segment_geotiff_marks_0_as_nodata_and_transparent(image, tmp_path, tiny_model_dir):
    out = tmp_path / "seg.tif"
    assert run("segment", image, "--classes", ",".join(CLASSES), "--model", tiny_model_dir, "--out", out,
               "--quiet") == 0
    with rasterio.open(out) as src:
        labels = src.read(1)
        assert src.dtypes[0] == "uint8" and src.nodata == 0
        cmap = src.colormap(1)
        assert cmap[0][3] == 0, "unlabelled is transparent"
        assert [cmap[k][3] for k in (1, 2, 3)] == [255, 255, 255]
        tags = src.tags()
        assert json.loads(tags["LABEL_VALUES"]) == VALUES
        assert json.loads(tags["MASKDIFFUSION_METADATA"])["label_values"] == VALUES
    with rasterio.open(image) as src:
        nodata = (src.read() == src.nodata).all(axis=0)
    assert set(np.unique(labels[~nodata])) <= {1, 2, 3} and (labels[nodata] == UNLABELLED).all()
    sidecar = json.loads((tmp_path / "seg.classes.json").read_text())
    assert sidecar["label_values"] == VALUES
    assert [c["value"] for c in sidecar["classes"]] == [1, 2, 3]
    colors = [tuple(c["color"]) for c in sidecar["classes"]]
    assert [cmap[k][:3] for k in (1, 2, 3)] == colors, "value k is drawn in the k-th class's colour"


def test_batch_writes_the_same_values_as_segment(image, tmp_path, tiny_model_dir):
    """``maskdiffusion batch`` on its own one-worker cluster: the same file as ``segment``."""
    common = ["--classes", ",".join(CLASSES), "--model", tiny_model_dir, "--tile-size", 256, "--quiet"]
    assert run("segment", image, "--out", tmp_path / "seg.tif", *common) == 0
    out_dir = tmp_path / "batch"
    assert run("batch", image, "--out-dir", out_dir, "--workers", 1, "--threads", torch.get_num_threads(),
               *common) == 0
    single, _ = read_image(tmp_path / "seg.tif")
    batched, _ = read_image(out_dir / "neon.tif")
    assert batched.dtype == single.dtype == np.uint8
    assert set(np.unique(batched)) <= {0, 1, 2, 3}, "0 where the image holds no data"
    assert np.array_equal(batched, single)
    with rasterio.open(out_dir / "neon.tif") as src:
        assert src.nodata == 0 and json.loads(src.tags()["LABEL_VALUES"]) == VALUES
    assert json.loads((out_dir / "neon.classes.json").read_text())["label_values"] == VALUES


def _evaluate(pred: Path, truth: Path, out: Path) -> dict:
    assert run("evaluate", "--pred", pred, "--labels", truth, "--dataset", "index", "--classes", ",".join(CLASSES),
               "--out", out) == 0
    return json.loads(out.with_suffix(".json").read_text())


def test_evaluate_reads_current_and_legacy_files_to_the_same_scores(tmp_path, capsys):
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, (32, 40)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.7, truth, rng.integers(1, 4, truth.shape)).astype(np.uint8)
    gt = write_labels(tmp_path / "a_gt.tif", truth, CLASSES, GEO)
    current = write_labels(tmp_path / "a_pred.tif", pred, CLASSES, GEO)
    legacy = tmp_path / "b_pred.tif"  # as written before label values were 1-based: 0 = the first class
    with rasterio.open(legacy, "w", driver="GTiff", width=40, height=32, count=1, dtype="uint8",
                       crs="EPSG:32617", transform=rasterio.Affine(1, 0, 400000, 0, -1, 3300000)) as dst:
        dst.write(pred - 1, 1)
        dst.update_tags(CLASSES=json.dumps(CLASSES))
    write_sidecar(legacy, {"classes": [{"name": n} for n in CLASSES], "model": "an old run"})

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new = _evaluate(current, gt, tmp_path / "new")
    assert not [w for w in caught if "1-based" in str(w.message)], "a current file is read as it is"
    with pytest.warns(UserWarning, match="before label values were 1-based") as caught:
        old = _evaluate(legacy, gt, tmp_path / "old")
        again = _evaluate(legacy, gt, tmp_path / "again")
    assert sum("1-based" in str(w.message) for w in caught) == 1, "the legacy file warns once"
    assert new["pixel_accuracy"] == pytest.approx((pred == truth).mean()) and new["miou"] < 1
    for report in (old, again):
        assert report["evaluations"]["supervised"]["confusion_matrix"] == \
            new["evaluations"]["supervised"]["confusion_matrix"]
        assert (report["miou"], report["pixel_accuracy"]) == (new["miou"], new["pixel_accuracy"])

    holes = pred.copy()
    holes[:4] = UNLABELLED
    partly = write_labels(tmp_path / "c_pred.tif", holes, CLASSES, GEO)
    report = _evaluate(partly, gt, tmp_path / "holes")
    assert report["unlabelled_predictions"] == 4 * 40
    assert report["evaluations"]["supervised"]["n_pixels"] == truth.size, "unlabelled pixels are not left out"
    assert report["pixel_accuracy"] == pytest.approx((holes == truth).mean())
    assert report["pixel_accuracy"] < new["pixel_accuracy"]
    capsys.readouterr()


def test_version_1_session_bundle_opens_with_labels_converted(sd, tmp_path):
    pixels, _ = read_image(SAMPLE)
    result = segment(pixels[:128, :128], CLASSES, sd, tile_size=128, keep_features=True)
    session = Session.from_result(result, dims=None)
    strokes = np.array(session.labels)
    strokes[10:30, 10:50] = 3
    session.edit(strokes)
    released = np.zeros(strokes.shape, bool)
    released[60:70, 60:90] = True
    session.edit(session.labels, released=released)
    assert (session.labels[released] == UNLABELLED).all()
    folder = save_session(tmp_path / "old", session)

    index = json.loads((folder / "session.json").read_text())
    assert index["version"] == 2
    index["version"] = 1  # version 1: int16 0-based class indices, -1 = no class
    np.save(folder / index["arrays"]["labels"], session.labels.astype(np.int16) - 1)
    (folder / "session.json").write_text(json.dumps(index))

    back = load_session(folder)
    assert back.labels.dtype.kind == "u"
    assert np.array_equal(back.labels, session.labels)
    assert (back.labels[released] == UNLABELLED).all() and (back.labels[10:30, 10:50] == 3).all()
    assert np.array_equal(back.edited, session.edited)
    assert [c.name for c in back.classes] == CLASSES
    refined = back.refine()
    assert (refined[10:30, 10:50] == 3).all() and set(np.unique(refined)) <= {1, 2, 3}


def test_300_classes_give_uint16_label_maps(sd, tmp_path):
    names = [f"class {i}" for i in range(300)]
    assert label_dtype(255) == np.uint8 and label_dtype(256) == label_dtype(300) == np.uint16
    r = segment(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), names, sd)
    assert r.labels.dtype == np.uint16 and 1 <= r.labels.min() and r.labels.max() <= 300
    assert r.metadata()["label_values"]["300"] == "class 299"

    labels = np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) % 301  # every value, 0 to 300
    out = write_labels(tmp_path / "many.tif", labels, names, GEO)
    with rasterio.open(out) as src:
        assert src.dtypes[0] == "uint16" and src.nodata == 0
        assert json.loads(src.tags()["LABEL_VALUES"])["300"] == "class 299"
    back, _ = read_image(out)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)

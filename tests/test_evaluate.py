"""The evaluate command end to end on synthetic Potsdam tiles, and its plain function."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from maskdiffusion.cli import main
from maskdiffusion.core.classes import preset_classes
from maskdiffusion.core.labels import from_index
from maskdiffusion.evaluation import EvaluationError, evaluate_pairs, find_pairs
from maskdiffusion.geo.isprs import POTSDAM6_TO_3, boundary_mask
from maskdiffusion.geo.raster_io import write_labels, write_raster, write_sidecar
from maskdiffusion.geo.synthetic import make_potsdam_like_tile, write_potsdam_like

SIZE = 128
TILES = {"top_potsdam_2_10": 0, "top_potsdam_2_11": 1}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two tiles: ISPRS files in ``data/``, labels in ``labels/``, predictions in ``pred/``.

    Tile 2_10 is predicted perfectly; in tile 2_11 every tree is predicted as low vegetation.
    """
    root = tmp_path_factory.mktemp("eval")
    labels_dir, pred_dir = root / "labels", root / "pred"
    labels_dir.mkdir()
    pred_dir.mkdir()
    truth = {}
    for name, seed in TILES.items():
        paths = write_potsdam_like(root / "data", name=name, size=SIZE, seed=seed)
        for key in ("label", "label_no_boundary"):
            shutil.copy(paths[key], labels_dir)
        labels = make_potsdam_like_tile(SIZE, seed)[1]
        truth[name] = labels
        pred = labels if seed == 0 else np.where(labels == 3, 2, labels)
        write_labels(pred_dir / f"{name}_RGBIR.tif", from_index(pred, 6), preset_classes("potsdam6"))
    return {"root": root, "labels": labels_dir, "pred": pred_dir, "data": root / "data", "truth": truth}


def run(argv):
    return main(["evaluate", *argv])


def test_evaluate_one_file_pair_writes_json_md_png(dataset, tmp_path, capsys):
    out = tmp_path / "report"
    rc = run(["--pred", str(dataset["pred"] / "top_potsdam_2_10_RGBIR.tif"),
              "--labels", str(dataset["data"] / "potsdam_2_10_label.tif"), "--out", str(out)])
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0 and report["n_images"] == 1
    assert report["evaluations"]["supervised"]["confusion_matrix"][1][1] > 0
    md = (tmp_path / "report.md").read_text()
    assert "mIoU 100.00" in md and "| building |" in md
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mIoU 100.00" in capsys.readouterr().out


def test_evaluate_folders_pairs_by_tile_id_and_prefers_no_boundary(dataset, tmp_path):
    rc = run(["--pred", str(dataset["pred"]), "--labels", str(dataset["labels"]), "--out", str(tmp_path / "r")])
    assert rc == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert [im["tile_id"] for im in report["images"]] == ["2_10", "2_11"]
    assert all("noBoundary" in im["label"] for im in report["images"])
    assert report["images"][0]["miou"] == 1.0 and report["images"][1]["miou"] < 1.0
    ev = report["evaluations"]["supervised"]
    assert ev["iou"]["tree"] < 1.0 and ev["iou"]["building"] == 1.0
    kept = {n: t[~boundary_mask(t, 3)] for n, t in dataset["truth"].items()}
    trees = {n: np.count_nonzero(k == 3) for n, k in kept.items()}
    assert ev["class_accuracy"]["tree"] == pytest.approx(trees["top_potsdam_2_10"] / sum(trees.values()))
    assert ev["n_pixels"] == sum(k.size for k in kept.values())
    assert report["unmatched_predictions"] == [] and report["unmatched_labels"] == []


def test_potsdam3_merges_classes(dataset):
    pairs, _, _ = find_pairs(dataset["pred"], dataset["labels"], "potsdam3")
    assert evaluate_pairs(pairs, "potsdam3")["miou"] == 1.0
    pred = {n: POTSDAM6_TO_3[np.where(t == 3, 2, t)] for n, t in dataset["truth"].items()}
    truth3 = {n: np.where(t >= 0, POTSDAM6_TO_3[t], -1) for n, t in dataset["truth"].items()}
    arrays = [(from_index(pred[n], 3), from_index(truth3[n], 3)) for n in TILES]
    report = evaluate_pairs(arrays, "index", classes=preset_classes("potsdam3"))
    assert report["miou"] == 1.0
    report = evaluate_pairs([(from_index(pred["top_potsdam_2_11"], 3), dataset["data"] / "potsdam_2_11_label.tif")],
                            "potsdam3")
    assert report["classes"] == [c.name for c in preset_classes("potsdam3")]
    assert report["miou"] == 1.0


def test_prediction_class_order_is_read_from_sidecar_or_tags(dataset, tmp_path):
    six = preset_classes("potsdam6")
    labels = dataset["truth"]["top_potsdam_2_10"]
    label_file = dataset["data"] / "potsdam_2_10_label.tif"
    reordered = six[::-1]
    tagged = write_labels(tmp_path / "rev.tif", from_index(5 - labels, 6), reordered)
    assert evaluate_pairs([(tagged, label_file)], "potsdam6")["miou"] == 1.0
    png = write_labels(tmp_path / "plain.png", from_index(5 - labels, 6), [f"c{i}" for i in range(6)])
    write_sidecar(png, {"classes": [c.to_dict() for c in reordered], "label_values": {}})
    assert evaluate_pairs([(png, label_file)], "potsdam6")["miou"] == 1.0
    other = write_labels(tmp_path / "other.tif", from_index(labels, 6), [f"c{i}" for i in range(6)])
    with pytest.warns(UserWarning, match="compared as they are"):
        assert evaluate_pairs([(other, label_file)], "potsdam6")["miou"] == 1.0


def test_napari_export_of_before_label_values_keeps_its_classes(tmp_path):
    """Napari exports made before ``label_values`` listed "unlabelled" as value 0: it is no class."""
    import rasterio

    truth = np.array([[1, 2, 2], [2, 1, 0]], dtype=np.uint8)
    gt = write_labels(tmp_path / "a_gt.tif", truth, ["road", "tree"])
    pred = tmp_path / "a_pred.png"
    with rasterio.open(pred, "w", driver="PNG", width=3, height=2, count=1, dtype="uint8") as dst:
        dst.write(np.array([[1, 2, 1], [2, 1, 1]], dtype=np.uint8), 1)
    write_sidecar(pred, {"classes": [{"name": "unlabelled", "value": 0}, {"name": "road", "value": 1},
                                     {"name": "tree", "value": 2}]})
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        report = evaluate_pairs([(pred, gt)], "index")
    assert report["classes"] == ["road", "tree"]
    assert report["pixel_accuracy"] == pytest.approx(4 / 5)
    assert report["evaluations"]["supervised"]["iou"] == {"road": pytest.approx(2 / 3), "tree": pytest.approx(2 / 3)}


def test_unsupervised_reports_dataset_and_per_image_matching(dataset, tmp_path):
    pred_dir = tmp_path / "clusters"
    pred_dir.mkdir()
    perms = {"top_potsdam_2_10": [3, 0, 5, 1, 4, 2], "top_potsdam_2_11": [1, 2, 3, 4, 5, 0]}
    for name, perm in perms.items():
        clusters = np.asarray(perm)[dataset["truth"][name]]
        write_labels(pred_dir / f"{name}_clusters.tif", from_index(clusters, 6), [f"cluster {k}" for k in range(6)])
    out = tmp_path / "u"
    rc = run(["--pred", str(pred_dir), "--labels", str(dataset["labels"]), "--unsupervised", "--out", str(out)])
    assert rc == 0
    report = json.loads((tmp_path / "u.json").read_text())
    per_image = report["evaluations"]["hungarian_per_image"]
    whole = report["evaluations"]["hungarian_dataset"]
    assert per_image["miou"] == 1.0
    assert whole["miou"] < 1.0 and report["miou"] == whole["miou"]
    assert len(whole["cluster_to_class"]) == 6
    for image, name in zip(report["images"], TILES):
        truth = dataset["truth"][name]
        for k in np.unique(truth[~boundary_mask(truth, 3)]):
            assert image["cluster_to_class"][perms[name][k]] == k
    md = (tmp_path / "u.md").read_text()
    assert "Hungarian matching over the whole data set" in md and "Hungarian matching per image" in md
    assert (tmp_path / "u.png").exists() and (tmp_path / "u_per_image.png").exists()


def test_index_dataset_with_ignore_index(tmp_path):
    """A foreign 0-based index raster (no label_values) with 255 = ignore, against our prediction."""
    target = np.array([[0, 1, 255], [2, 2, 1]], dtype=np.uint8)
    pred = np.array([[0, 1, 0], [2, 1, 1]], dtype=np.uint8)
    write_labels(tmp_path / "a_pred.png", pred + 1, ["x", "y", "z"])
    write_raster(tmp_path / "a_gt.tif", target)
    with pytest.warns(UserWarning, match="a_gt.tif was written before label values were 1-based"):
        rc = run(["--pred", str(tmp_path / "a_pred.png"), "--labels", str(tmp_path / "a_gt.tif"), "--dataset",
                  "index", "--classes", "x,y,z", "--ignore-index", "255", "--out", str(tmp_path / "idx")])
    assert rc == 0
    report = json.loads((tmp_path / "idx.json").read_text())
    assert report["evaluations"]["supervised"]["n_pixels"] == 5
    assert report["unlabelled_predictions"] == 0
    assert report["pixel_accuracy"] == pytest.approx(4 / 5)
    assert report["evaluations"]["supervised"]["iou"]["z"] == pytest.approx(1 / 2)


def test_missing_label_file_exits_2_with_one_line(dataset, tmp_path, capsys):
    missing = tmp_path / "nope_label.tif"
    rc = run(["--pred", str(dataset["pred"] / "top_potsdam_2_10_RGBIR.tif"), "--labels", str(missing),
              "--out", str(tmp_path / "r")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(missing) in err and err.startswith("maskdiffusion evaluate: error:")
    assert not list(tmp_path.glob("r.*"))


def test_nothing_to_evaluate():
    with pytest.raises(EvaluationError, match="nothing to evaluate"):
        evaluate_pairs([], "potsdam6")
    with pytest.raises(EvaluationError, match="fixed classes"):
        evaluate_pairs([(np.zeros((2, 2), int), np.zeros((2, 2), int))], "potsdam6", classes="a,b")


def test_bad_inputs_exit_2(dataset, tmp_path, capsys):
    small = tmp_path / "small.tif"
    write_labels(small, np.zeros((10, 10), np.uint8), preset_classes("potsdam6"))
    assert run(["--pred", str(small), "--labels", str(dataset["data"] / "potsdam_2_10_label.tif")]) == 2
    assert "10x10 but its label" in capsys.readouterr().err
    assert run(["--pred", str(dataset["pred"]), "--labels", str(dataset["data"]), "--dataset", "index"]) == 2
    assert "index labels must have one band" in capsys.readouterr().err
    untagged = write_raster(tmp_path / "untagged.tif", np.zeros((10, 10), np.uint8))
    assert run(["--pred", str(untagged), "--labels", str(small), "--dataset", "index"]) == 2
    assert "needs the class names (--classes)" in capsys.readouterr().err
    text = tmp_path / "x_label.tif"
    text.write_text("no image")
    assert run(["--pred", str(small), "--labels", str(text)]) == 2
    assert "not an image" in capsys.readouterr().err


def test_end_to_end_from_images(tmp_path, tiny_model_dir):
    """--images: segment with the dataset's classes into --pred, then score; a rerun keeps them."""
    from maskdiffusion.cli import main
    from maskdiffusion.geo.synthetic import write_potsdam_like

    images, labels = tmp_path / "images", tmp_path / "labels"
    labels.mkdir()
    for i in range(2):
        files = write_potsdam_like(images, f"top_potsdam_2_1{i}", size=128, seed=i)
        shutil.move(files["label_no_boundary"], labels)
        Path(files["label"]).unlink()
    args = ["evaluate", "--images", str(images), "--pred", str(tmp_path / "pred"), "--labels", str(labels),
            "--dataset", "potsdam3", "--model", str(tiny_model_dir), "--tile-size", "128", "--bands", "0,1,2",
            "--out", str(tmp_path / "report")]
    assert main(args) == 0
    preds = sorted((tmp_path / "pred").glob("*.tif"))
    assert [p.name for p in preds] == ["top_potsdam_2_10_RGBIR.tif", "top_potsdam_2_11_RGBIR.tif"]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_images"] == 2 and [c.lower() for c in report["classes"]] == [
        c.name.lower() for c in preset_classes("potsdam3")]
    assert 0 <= report["miou"] <= 1
    before = [p.stat().st_mtime_ns for p in preds]
    assert main(args + ["--overwrite"]) == 0
    assert [p.stat().st_mtime_ns for p in preds] == before


def _report_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_an_existing_report_is_kept_unless_overwrite(dataset, tmp_path, capsys):
    args = ["--pred", str(dataset["pred"]), "--labels", str(dataset["labels"]), "--out", str(tmp_path / "r")]
    assert run(args) == 0
    (tmp_path / "r.md").write_text("my notes")
    before = _report_files(tmp_path)
    capsys.readouterr()
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"maskdiffusion evaluate: error: {tmp_path / 'r.json'} exists; pass --overwrite to replace it"
    assert _report_files(tmp_path) == before
    assert run(args + ["--overwrite"]) == 0
    assert (tmp_path / "r.md").read_text().startswith("# Evaluation")


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]], ids=["plain", "overwrite"])
@pytest.mark.parametrize("where", ["file", "folder"])
def test_a_report_on_an_input_is_refused_whatever_overwrite_says(dataset, tmp_path, capsys, where, overwrite):
    """Issue 27 case 1: --out p with the prediction p.png (given, or in the --pred folder) would
    replace it with the confusion plot: one line, exit 2, no invitation to --overwrite, nothing written."""
    folder = tmp_path / "pred"
    folder.mkdir()
    pred = folder / "top_potsdam_2_10.png"
    write_labels(pred, from_index(dataset["truth"]["top_potsdam_2_10"], 6), preset_classes("potsdam6"))
    before = _report_files(folder)
    code = run(["--pred", str(pred if where == "file" else folder), "--labels", str(dataset["labels"]),
                "--out", str(folder / "top_potsdam_2_10"), *overwrite])
    err = capsys.readouterr().err.strip()
    source = "the input --pred" if where == "file" else f"an input of --pred {folder}"
    assert code == 2 and err == (f"maskdiffusion evaluate: error: --out {folder / 'top_potsdam_2_10'} writes the "
                                 f"report to {pred}, which is {source}: it would be replaced by the report; "
                                 "choose another --out"), err
    assert _report_files(folder) == before


def test_labels_without_a_class_colour_are_an_error(dataset, tmp_path, capsys):
    """A ground truth none of whose pixels has a class colour is bad input, not an mIoU of '–'."""
    from maskdiffusion.geo.raster_io import write_raster

    wrong = write_raster(tmp_path / "top_potsdam_2_10_label.tif", np.full((3, SIZE, SIZE), 7, np.uint8))
    code = run(["--pred", str(dataset["pred"] / "top_potsdam_2_10_RGBIR.tif"), "--labels", str(wrong),
                "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no pixel has the colour of a potsdam6 class" in err, err
    assert not list(tmp_path.glob("r*"))


def test_unlabelled_index_ground_truth_is_an_error(tmp_path, capsys):
    labels = np.zeros((16, 16), np.uint8)
    write_labels(tmp_path / "truth.tif", labels, ["a", "b"])
    write_labels(tmp_path / "pred.tif", labels + 1, ["a", "b"])
    code = run(["--pred", str(tmp_path / "pred.tif"), "--labels", str(tmp_path / "truth.tif"), "--dataset", "index",
                "--classes", "a,b", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no ground-truth pixel in the labels belongs to a class" in err, err


def test_a_full_disk_leaves_the_earlier_report_whole(dataset, tmp_path):
    """Item 9: a disk that fills up while the report is written leaves no part of a new report;
    the earlier one (--overwrite) is byte-identical, and no temporary file is left."""
    from cli_process import error_lines, run_cli

    args = ["evaluate", "--pred", dataset["pred"], "--labels", dataset["labels"], "--out", tmp_path / "r"]
    assert run([str(a) for a in args[1:]]) == 0
    before = _report_files(tmp_path)
    largest = max(before, key=lambda n: len(before[n]))
    limit = (sorted(map(len, before.values()))[-2] + len(before[largest])) // 2
    r = run_cli(*args, "--overwrite", file_size=limit)
    lines = error_lines(r.stderr)
    assert r.returncode == 1 and len(lines) == 1 and largest in lines[0] and "File too large" in lines[0], r.stderr
    assert _report_files(tmp_path) == before

"""``maskdiffusion batch`` on Dask: two worker processes, rerun and resume, failures, shared prototypes.

One local cluster of 2 worker processes serves the module (``--scheduler``); the kill-and-resume
test also starts the command's own local cluster in a subprocess and kills it midway.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_process import start_cli
from maskdiffusion import cli
from maskdiffusion.batch import (
    BatchConfig,
    BatchInputError,
    expand_inputs,
    is_finished,
    plan_jobs,
    shared_labels,
)
from maskdiffusion.core.params import SegmentParams
from maskdiffusion.core.prototypes import upsample
from maskdiffusion.geo.raster_io import read_class_names, read_image
from maskdiffusion.geo.synthetic import write_potsdam_like

CLASSES = "road,tree,building"


def batch(*argv) -> int:
    """``maskdiffusion batch ARGV`` in this process, exit status from the CLI's own error handling."""
    return cli.main(["batch", *map(str, argv)])



@pytest.fixture(scope="module")
def cluster():
    """The address of a local Dask cluster of 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as lc, Client(lc) as client:
        client.wait_for_workers(2)
        yield lc.scheduler_address


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    """Three ISPRS-like RGBIR tiles with world files (and their label files beside them)."""
    folder = tmp_path_factory.mktemp("tiles")
    for i, size in enumerate((128, 128, 192)):
        write_potsdam_like(folder, f"top_potsdam_2_{10 + i}", size=size, seed=i)
    return folder


def run_args(tiles: Path, out: Path, model: Path, *extra) -> list:
    return [tiles / "*_RGBIR.tif", "--out-dir", out, "--classes", CLASSES, "--model", model,
            "--tile-size", 128, "--quiet", *extra]


def status_of(out: Path) -> dict:
    return json.loads((out / "batch_status.json").read_text())["tiles"]


def test_batch_on_two_worker_processes_then_rerun_skips(tiles, cluster, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = run_args(tiles, out, tiny_model_dir, "--scheduler", cluster)
    assert batch(*args) == 0

    inputs = sorted(tiles.glob("*_RGBIR.tif"))
    records = status_of(out)
    assert len(records) == 3 and {r["status"] for r in records.values()} == {"done"}
    for src in inputs:
        labels, geo = read_image(out / f"{src.stem}.tif")
        image, src_geo = read_image(src)
        assert labels.shape == image.shape[:2] and set(np.unique(labels)) <= {1, 2, 3}
        assert geo.crs == src_geo.crs == "EPSG:32633"
        assert np.allclose(geo.transform, src_geo.transform)
        assert read_class_names(out / f"{src.stem}.tif") == CLASSES.split(",")
        sidecar = json.loads((out / f"{src.stem}.classes.json").read_text())
        assert [c["name"] for c in sidecar["classes"]] == CLASSES.split(",")
        assert sidecar["parameters"]["tile_size"] == 128
    assert len({r["pid"] for r in records.values()}) == 2, "both worker processes took tiles"
    assert {r["model_loads"] for r in records.values()} == {1}, "each worker loads the model once"

    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    assert batch(*args) == 0
    assert {r["status"] for r in status_of(out).values()} == {"skipped"}
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.suffix == ".tif")

    changed = [a if a != CLASSES else "road,tree" for a in args]
    assert batch(*changed) == 0
    assert {r["status"] for r in status_of(out).values()} == {"done"}, "other settings: no silent skip"
    assert read_class_names(out / f"{inputs[0].stem}.tif") == ["road", "tree"]


def test_a_corrupt_input_is_recorded_and_the_others_go_on(tiles, cluster, tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.tif"
    bad.write_text("this is not a TIFF")
    good = sorted(tiles.glob("*_RGBIR.tif"))[0]
    out = tmp_path / "out"
    rc = batch(good, bad, "--out-dir", out, "--classes", CLASSES, "--model", tiny_model_dir, "--tile-size", 128,
               "--scheduler", cluster)
    assert rc == 1
    records = status_of(out)
    assert records[good.stem]["status"] == "done" and (out / f"{good.stem}.tif").exists()
    assert records["broken"]["status"] == "failed"
    assert "not an image" in records["broken"]["reason"]
    assert not (out / "broken.tif").exists() and not (out / "broken.classes.json").exists()
    err = capsys.readouterr().err
    assert "1 done, 0 skipped (finished before), 1 failed" in err and "failed broken.tif" in err


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "Ctrl-C", "SIGTERM"])
def test_kill_midway_then_resume(how, cluster, tiny_model_dir, tmp_path):
    """Stop a whole run (driver, its local cluster, its worker) after its first output; resume it.

    SIGKILL leaves whatever was half-written; Ctrl-C (SIGINT to the process group, as a terminal
    sends it) and SIGTERM (``docker stop``, Slurm) must shut the cluster down cleanly with exit
    status 130 and 143. The resumed run leaves no temporary or broken file and gives the same
    outputs as a clean run.
    """
    src = tmp_path / "in"
    for i in range(4):
        write_potsdam_like(src, f"tile{i}", size=256, seed=10 + i)
    out = tmp_path / "out"
    args = [src / "*_RGBIR.tif", "--out-dir", out, "--classes", CLASSES, "--model", tiny_model_dir,
            "--tile-size", 128, "--workers", 1, "--threads", 1]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = start_cli("batch", *args, stderr=err)
        try:
            deadline = time.monotonic() + 120
            while not list(out.glob("*.classes.json")) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            at_stop = len(list(out.glob("*.classes.json")))
            os.killpg(proc.pid, how)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert 1 <= at_stop < 4, "stopped midway"
    assert _wait_until_gone(proc.pid), "no worker process outlives the run"
    if how != signal.SIGKILL:
        text = log.read_text()
        assert rc == 128 + how and "rerun the same command" in text and "Traceback" not in text, text

    stems = sorted(p.stem for p in src.glob("*_RGBIR.tif"))
    finished = {s for s in stems if (out / f"{s}.classes.json").exists()}
    assert all((out / f"{s}.tif").exists() for s in finished), "no sidecar without its labels"
    unfinished = next((s for s in stems if s not in finished), stems[-1])
    (out / f".{unfinished}.0123456789ab.tmp.tif").write_bytes(b"half a tiff")
    lost = sorted(finished)[0]
    (out / f"{lost}.classes.json").unlink()  # labels of ours whose sidecar never came (as older versions left)
    assert batch(*args[:-4], "--scheduler", cluster, "--quiet") == 0

    records = status_of(out)
    assert sum(r["status"] == "skipped" for r in records.values()) == len(finished - {lost})
    assert sum(r["status"] == "done" for r in records.values()) == 4 - len(finished - {lost})
    assert not list(out.glob(".*tmp*")), "no temporary files left"
    clean = tmp_path / "clean"
    assert batch(*args[:-4], "--out-dir", clean, "--scheduler", cluster, "--quiet") == 0
    for stem in stems:
        labels, geo = read_image(out / f"{stem}.tif")
        expected, clean_geo = read_image(clean / f"{stem}.tif")
        assert labels.shape == (256, 256) and geo.transform == clean_geo.transform
        assert np.array_equal(labels, expected), f"{stem}: the resumed run equals a clean run"
        sidecars = [json.loads((d / f"{stem}.classes.json").read_text()) for d in (out, clean)]
        assert sidecars[0]["batch"] == sidecars[1]["batch"] and sidecars[0]["classes"] == sidecars[1]["classes"]


def test_files_batch_did_not_write_are_not_replaced(tiles, cluster, tiny_model_dir, tmp_path, capsys):
    """A user's file at an output path fails that tile, with the reason, and is left as it was;
    --overwrite replaces it. A file the status records as batch's own is redone."""
    out = tmp_path / "out"
    out.mkdir()
    stems = sorted(p.stem for p in tiles.glob("*_RGBIR.tif"))
    mine = out / f"{stems[0]}.tif"
    mine.write_bytes(b"my own map")
    notes = out / f"{stems[1]}.classes.json"
    notes.write_text('{"my": "notes"}')
    args = run_args(tiles, out, tiny_model_dir, "--scheduler", cluster)
    assert batch(*[a for a in args if a != "--quiet"]) == 1
    records = status_of(out)
    err = capsys.readouterr().err
    assert "3 input(s), 0 finished before, 3 to do, 2 refused (files batch did not write)" in err
    for path in (mine, notes):
        reason = f"{path} exists and was not written by maskdiffusion batch; pass --overwrite to replace it"
        stem = path.name.split(".")[0]
        assert records[stem] == {"input": str(tiles / f"{stem}.tif"), "output": str(out / f"{stem}.tif"),
                                 "status": "failed", "reason": reason}
        assert f"failed {stem}.tif: {reason}" in err
    assert mine.read_bytes() == b"my own map" and notes.read_text() == '{"my": "notes"}'
    assert not (out / f"{stems[1]}.tif").exists() and records[stems[2]]["status"] == "done"

    ours = out / f"{stems[2]}.tif"
    stamp = ours.stat()
    ours.write_bytes(b"\0" * stamp.st_size)  # ours, broken in place: same size and time as the status says
    os.utime(ours, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert batch(*args) == 1
    assert status_of(out)[stems[2]]["status"] == "done" and read_image(ours)[0].shape == (192, 192)

    assert batch(*args, "--overwrite") == 0
    assert {r["status"] for r in status_of(out).values()} == {"done"}
    assert read_image(mine)[0].shape == (128, 128)


def test_a_status_file_batch_did_not_write_is_not_replaced(tiles, cluster, tiny_model_dir, tmp_path, capsys):
    """Issue 27 case 3: a user's batch_status.json stops the run before any work (one line,
    exit 2) and is left as it was; --overwrite replaces it with batch's record."""
    out = tmp_path / "out"
    out.mkdir()
    mine = out / "batch_status.json"
    mine.write_text('{"my": "notes"}')
    one = sorted(tiles.glob("*_RGBIR.tif"))[0]
    args = [one, "--out-dir", out, "--classes", CLASSES, "--model", tiny_model_dir, "--tile-size", 128,
            "--quiet", "--scheduler", cluster]
    assert batch(*args) == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdiffusion batch: error: {mine} exists and was not written by maskdiffusion batch, which records its run "
        "there: move it, choose another --out-dir or pass --overwrite to replace it")
    assert sorted(p.name for p in out.iterdir()) == ["batch_status.json"] and mine.read_text() == '{"my": "notes"}'
    assert batch(*args, "--overwrite") == 0
    assert status_of(out)[one.stem]["status"] == "done"
    assert batch(*args) == 0, "its own status file is batch's to rewrite"


def test_out_dir_that_is_an_input_folder_is_refused(tiles, tmp_path, capsys):
    """Item 14: the outputs would replace the inputs (or be taken for inputs on a rerun)."""
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(tiles.glob("*_RGBIR.tif"))[:1]:
        (src / p.name).write_bytes(p.read_bytes())
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    for out_dir in (src, tmp_path):
        assert batch(src / "*.tif", "--out-dir", out_dir, "--classes", CLASSES, "--model", tmp_path / "none") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"is or contains the input folder {src.resolve()}" in err, err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def _wait_until_gone(pgid: int, timeout: float = 20) -> bool:
    """True once no live (non-zombie) process is left in the process group ``pgid`` (Linux /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, IndexError, ValueError):
                continue
            if int(group) == pgid and state != "Z":
                alive.append(stat.parent.name)
        if not alive:
            return True
        time.sleep(0.2)
    return False


def test_shared_prototypes_give_one_set_for_all_tiles_and_resume(tiles, cluster, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    args = run_args(tiles, out, tiny_model_dir, "--shared-prototypes", "--scheduler", cluster)
    assert batch(*args) == 0
    assert {r["status"] for r in status_of(out).values()} == {"done"}
    assert not (out / ".maskdiffusion-cache").exists(), "the kept features are deleted when done"
    with np.load(out / "batch_prototypes.npz") as z:
        protos, n_tiles = z["prototypes"], int(z["n_tiles"])
    assert protos.shape[0] == 3 and n_tiles == 3

    first = sorted(tiles.glob("*_RGBIR.tif"))[-1]
    written, _ = read_image(out / f"{first.stem}.tif")
    expected = _labels_from(first, protos, tiny_model_dir)
    assert (written == expected).mean() > 0.99
    sidecar = json.loads((out / f"{first.stem}.classes.json").read_text())
    assert sidecar["batch"]["shared_prototypes"] and sidecar["batch"]["prototype_tiles"] == 3

    (out / f"{first.stem}.tif").unlink()
    assert batch(*args) == 0
    records = status_of(out)
    assert records[first.stem]["status"] == "done"
    assert sum(r["status"] == "skipped" for r in records.values()) == 2
    again, _ = read_image(out / f"{first.stem}.tif")
    assert np.array_equal(again, written), "the saved prototypes are reused on resume"


def _labels_from(path: Path, protos: np.ndarray, model) -> np.ndarray:
    from maskdiffusion.engine import segment

    image, _ = read_image(path)
    result = segment(image, CLASSES, str(model), tile_size=128, keep_features=True, device="cpu")
    grid = np.einsum("kc,chw->khw", protos, result.features.astype(np.float32))
    return shared_labels(grid, image.shape[:2])


def test_shared_labels_equal_one_resize():
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((4, 9, 7)).astype(np.float32)
    shape = (9 * 16 - 5, 7 * 16 - 11)
    whole = upsample(torch.from_numpy(grid), (9 * 16, 7 * 16))[:, : shape[0], : shape[1]].argmax(0).numpy()
    assert np.array_equal(shared_labels(grid, shape), whole + 1), "label value k is the k-th class's best score"


def test_inputs_from_files_folders_and_globs(tiles, tmp_path):
    rgbir = sorted(p.resolve() for p in tiles.glob("*_RGBIR.tif"))
    assert expand_inputs([tiles / "*_RGBIR.tif"]) == rgbir
    assert expand_inputs([rgbir[1], str(tiles / "*_RGBIR.tif")]) == [rgbir[1], rgbir[0], rgbir[2]]
    from_folder = expand_inputs([tiles])
    assert set(rgbir) < set(from_folder) and not any(p.suffix == ".tfw" for p in from_folder)
    with pytest.raises(BatchInputError, match="no image files"):
        expand_inputs([tiles], exclude=tiles)
    with pytest.raises(BatchInputError, match="does not exist"):
        expand_inputs([tmp_path / "nope.tif"])
    with pytest.raises(BatchInputError, match="no image files"):
        expand_inputs([str(tmp_path / "*.tif")])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.tif").write_bytes(b"")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(BatchInputError, match="both write x.tif"):
        plan_jobs(expand_inputs([tmp_path / "a" / "x.tif", tmp_path / "x.png"]), tmp_path,
                  BatchConfig((), SegmentParams()))


def test_outputs_in_the_input_folder_are_not_taken_for_inputs(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.tif").write_bytes(b"")
    assert expand_inputs([str(tmp_path / "**" / "*.tif")], exclude=tmp_path / "out") == [(tmp_path / "a.tif").resolve()]


def test_finished_means_output_and_sidecar_with_this_runs_fingerprint(tmp_path):
    from maskdiffusion.core.classes import as_class_specs
    from maskdiffusion.geo.raster_io import write_labels, write_sidecar

    (tmp_path / "in.tif").write_bytes(b"x")
    config = BatchConfig(tuple(as_class_specs("a,b")), SegmentParams())
    job = plan_jobs([tmp_path / "in.tif"], tmp_path / "out", config)[0]
    (tmp_path / "out").mkdir()
    meta = {"batch": {"fingerprint": job.fingerprint}}
    write_labels(job.output, np.zeros((4, 4), np.uint8), config.classes, None, meta)
    assert not is_finished(job), "no sidecar yet"
    write_sidecar(job.output, {"batch": {"fingerprint": "another run"}})
    assert not is_finished(job)
    write_sidecar(job.output, meta)
    assert is_finished(job)
    other = plan_jobs([tmp_path / "in.tif"], tmp_path / "out", BatchConfig(config.classes, SegmentParams(seed=1)))[0]
    assert not is_finished(other)
    (tmp_path / "in.tif").write_bytes(b"changed")
    assert not is_finished(plan_jobs([tmp_path / "in.tif"], tmp_path / "out", config)[0]), "input changed"


@pytest.mark.parametrize("extra, message", [
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "with --scheduler"),
    (["--workers", "0"], "at least 1"),
    (["--shared-prototypes", "--unsupervised", "3"], "needs class names"),
])
def test_bad_options_are_one_line_errors(tiles, tmp_path, capsys, extra, message):
    argv = [tiles / "*_RGBIR.tif", "--out-dir", tmp_path, "--classes", CLASSES, *extra]
    assert batch(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("out_dir", ["a-file", "a-file/sub"])
def test_an_out_dir_that_is_a_file_is_a_bad_path(tiles, tmp_path, capsys, out_dir):
    """Issue 27 case 16: exit 2 (a bad path, as the README's table says), one line, the file kept."""
    (tmp_path / "a-file").write_text("mine")
    assert batch(tiles / "*_RGBIR.tif", "--out-dir", tmp_path / out_dir, "--classes", CLASSES,
                 "--model", tmp_path / "none") == 2
    err = capsys.readouterr().err.strip()
    said = ("is a file, not a folder" if out_dir == "a-file"
            else f"cannot make the folder {tmp_path / out_dir}: {tmp_path / 'a-file'} is a file")
    assert err.startswith("maskdiffusion batch: error: ") and said in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert batch(tmp_path / "none.tif", "--out-dir", tmp_path / "o", "--classes", CLASSES) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_missing_model_stops_the_run_with_one_line(tiles, cluster, tmp_path, capsys):
    rc = batch(tiles / "*_RGBIR.tif", "--out-dir", tmp_path, "--classes", CLASSES, "--model", tmp_path / "no-model",
               "--scheduler", cluster, "--quiet")
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "does not exist" in err and len(err.splitlines()) == 1


def test_leftovers_of_interrupted_runs_are_removed_and_nothing_else(tmp_path):
    from maskdiffusion.batch import CACHE_DIR
    from maskdiffusion.batch.jobs import remove_temporaries

    (tmp_path / "a.tif").write_bytes(b"x")
    job = plan_jobs([tmp_path / "a.tif"], tmp_path / "out", BatchConfig((), SegmentParams()))[0]
    cache = tmp_path / "out" / CACHE_DIR
    cache.mkdir(parents=True)
    leftovers = [tmp_path / "out" / ".a.0123456789ab.tmp.tif", tmp_path / "out" / ".a.classes.0123456789ab.tmp.json",
                 cache / ".a.0123456789abcdef.0123456789ab.tmp.npz", cache / "a.0123456789abcdef.npz"]
    kept = [tmp_path / "out" / ".b.0123456789ab.tmp.tif", tmp_path / "out" / "notes.txt", job.cache()]
    for p in leftovers + kept:
        p.write_bytes(b"")
    remove_temporaries([job])
    assert not any(p.exists() for p in leftovers) and all(p.exists() for p in kept)


def test_save_refine_drafts_are_refined_and_corrected_in_a_dataset_without_a_model(tiles, cluster, tiny_model_dir,
                                                                                    tmp_path):
    """``--save-refine`` writes what Refine needs beside each result; a project whose output
    folder is batch's takes those drafts as they are (same classes and settings), refines one
    and learns from its correction with no model; other settings do not count."""
    from maskdiffusion.dataset import Project, Status, draft
    from maskdiffusion.engine import drain
    from maskdiffusion.geo.refine_file import read_refine_state

    out = tmp_path / "out"
    assert batch(*run_args(tiles, out, tiny_model_dir, "--scheduler", cluster, "--save-refine")) == 0
    inputs = sorted(tiles.glob("*_RGBIR.tif"))
    state, meta = read_refine_state(out / f"{inputs[0].stem}.refine.npz")
    labels = read_image(out / f"{inputs[0].stem}.tif")[0]
    assert state.shape == labels.shape and state.base is not None and state.features.dtype == np.float16
    assert meta["batch"]["fingerprint"] == json.loads((out / f"{inputs[0].stem}.classes.json").read_text())[
        "batch"]["fingerprint"]
    assert json.loads((out / "batch_status.json").read_text())["settings"]["save_refine"] is True
    assert batch(*run_args(tiles, out, tiny_model_dir, "--scheduler", cluster, "--save-refine")) == 0
    assert {r["status"] for r in status_of(out).values()} == {"skipped"}

    params = SegmentParams(tile_size=128)
    with Project.create(out, tiles / "*_RGBIR.tif", CLASSES, params=params, model=str(tiny_model_dir)) as project:
        assert project.counts()["drafted"] == 3
        ready = drain(draft(project, 0, "no-such-model"))
        assert ready.source == "batch" and np.array_equal(ready.labels, labels)
        session = ready.session()
        painted = np.array(session.labels)
        painted[:30, :30] = 3
        session.edit(painted, np.pad(np.ones((30, 30), bool), ((0, 98), (0, 98))))
        refined = np.asarray(session.refine())
        assert (refined[:30, :30] == 3).all()
        project.save_labels(0, refined, status=Status.DONE)
        assert project.memory.knows("building") and project.memory.dims == 160
        assert drain(draft(project, 1, "no-such-model")).state.prior is not None
    with Project.create(tmp_path / "other", tiles / "*_RGBIR.tif", CLASSES, model=str(tiny_model_dir)) as other:
        assert other.counts()["drafted"] == 0, "batch's drafts of other settings (tile 512) elsewhere are not used"
    with Project.create(out, tiles / "*_RGBIR.tif", "road,tree", params=params, model=str(tiny_model_dir),
                        new=True) as changed:
        assert changed.counts()["drafted"] == 0, "batch's drafts with other classes are not used"

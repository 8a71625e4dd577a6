"""``maskdiffusion segment`` writes all its outputs completely or none, under real failures.

Disk full is a file size limit in a child process (writes past it fail with EFBIG, as on a full
disk); read-only folders are real, with root's permission bypass dropped in the child. Each
failure is one line naming the file, exit 1 (2 for a path that cannot be used as given), and
every file the run would have replaced stays byte for byte as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from cli_process import error_lines, run_cli, start_cli, wait_for
from maskdiffusion.cli import main

SAMPLE = Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif"

#: Each optional output and the option that asks for it.
EXPORTS = {"conf.tif": "--confidence", "seg.gpkg": "--polygons", "seg.json": "--coco"}
LIBRARY_TEXT = ("_tiffWriteProc", "TIFF", "CPLE", "ERROR 1", "sqlite", "Traceback")


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_model_dir) -> Path:
    """A folder with the image and a complete earlier result: labels, sidecar and every export."""
    folder = tmp_path_factory.mktemp("good")
    image = shutil.copy(SAMPLE, folder / "neon.tif")
    args = ["segment", image, "--classes", "tree,shrub,sand", "--model", tiny_model_dir, "--out", folder / "seg.tif",
            "--quiet", *[a for name, option in EXPORTS.items() for a in (option, folder / name)]]
    assert main([str(a) for a in args]) == 0
    return folder


def _copy_of(good: Path, tmp_path: Path) -> dict[str, bytes]:
    for p in good.iterdir():
        shutil.copy(p, tmp_path / p.name)
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def _segment(folder: Path, model, *exports: str) -> list:
    args = ["segment", folder / "neon.tif", "--classes", "tree,shrub,sand", "--model", model,
            "--out", folder / "seg.tif", "--overwrite", "--quiet"]
    return args + [a for name in exports for a in (EXPORTS[name], folder / name)]


@pytest.mark.parametrize("failing", ["seg.tif", *EXPORTS])
def test_disk_full_while_writing_one_output_keeps_every_earlier_file(good, tmp_path, tiny_model_dir, failing):
    """Items 1, 2, 13: with --overwrite, the disk fills up while one output is written.

    Exit 1 and one line naming that file; no raw library text; the earlier labels, sidecar and
    exports are byte-identical (none was replaced, not even the ones written before the
    failure) and no temporary file is left.
    """
    before = _copy_of(good, tmp_path)
    exports = [failing] if failing in EXPORTS else []
    others = [before[n] for n in ("seg.tif", "seg.classes.json", *exports) if n != failing]
    limit = (max(map(len, others)) + len(before[failing])) // 2  # fits the others, not the failing one
    r = run_cli(*_segment(tmp_path, tiny_model_dir, *exports), file_size=limit)
    lines = error_lines(r.stderr)
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and failing in lines[0] and "File too large" in lines[0], r.stderr
    assert not any(text in r.stderr for text in LIBRARY_TEXT), r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_scores_on_a_full_disk_say_why(tmp_path, monkeypatch):
    """Issue 27 case 15: --scores past a file size limit (as on a full disk) says "File too
    large" as the other outputs do, not numpy's "N requested and M written"; nothing is left."""
    import resource

    from maskdiffusion.cli.segment import _save_npy
    from maskdiffusion.errors import OutputError

    scores = np.zeros((3, 200, 200), np.float32)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (scores.nbytes // 2, hard))
    try:
        with pytest.raises(OutputError) as error:
            _save_npy(tmp_path / "scores.npy", scores)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    said = f"cannot write {tmp_path / 'scores.npy'}: File too large; nothing was written or replaced"
    assert str(error.value) == said
    assert not list(tmp_path.iterdir())
    _save_npy(tmp_path / "scores.npy", scores)
    assert np.array_equal(np.load(tmp_path / "scores.npy"), scores)


def test_scores_that_do_not_read_back_as_written_are_not_kept(tmp_path, monkeypatch):
    """The --scores check reads the file back piece by piece (no memory map holding it all):
    a file that differs anywhere is refused and removed."""
    from maskdiffusion.cli.segment import _save_npy
    from maskdiffusion.errors import OutputError

    scores = np.random.default_rng(0).random((2, 300, 200)).astype(np.float32)
    scores[1, 299, 199] = np.nan
    _save_npy(tmp_path / "good.npy", scores)
    assert np.array_equal(np.load(tmp_path / "good.npy"), scores, equal_nan=True)
    real_write = np.lib.format.write_array

    def last_value_changed(f, array, **kwargs):
        changed = array.copy()
        changed.reshape(-1)[-1] = 0.5
        real_write(f, changed, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", last_value_changed)
    with pytest.raises(OutputError, match="does not read back as written"):
        _save_npy(tmp_path / "bad.npy", scores)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.npy"]


def test_sidecar_that_cannot_be_written_takes_the_labels_back(good, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Item 13: the sidecar is written last; when it fails, the new labels are not kept either."""
    import maskdiffusion.geo.atomic as atomic

    before = _copy_of(good, tmp_path)
    real_write_text = atomic.write_text

    def full_disk(path, text, parse=None):
        if str(path).endswith(".classes.json"):
            with atomic.atomic_output(path) as tmp, open(tmp, "w") as f:
                f.write(text[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, text, parse)

    monkeypatch.setattr(atomic, "write_text", full_disk)
    assert main([str(a) for a in _segment(tmp_path, tiny_model_dir, "seg.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seg.classes.json: No space left on device" in err, err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_read_only_export_folder_is_refused_before_any_work(good, tmp_path, tiny_model_dir):
    """Items 2, 8: a read-only --polygons folder is found before the model runs (here the model
    does not even exist, and the folder is what is reported); the old results stay."""
    before = _copy_of(good, tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    args = _segment(tmp_path, tmp_path / "no-such-model")
    r = run_cli(*args, "--polygons", locked / "seg.gpkg", obey_permissions=True)
    lines = error_lines(r.stderr)
    assert r.returncode == 1, r.stderr
    assert lines == [f"maskdiffusion segment: error: cannot write in {locked}: Permission denied"], r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not list(locked.iterdir())


def test_read_only_output_folder_is_refused_before_any_work(tmp_path):
    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    r = run_cli("segment", image, "--classes", "a,b", "--model", tmp_path / "no-such-model", "--out",
                locked / "seg.tif", obey_permissions=True)
    assert r.returncode == 1 and error_lines(r.stderr) == [
        f"maskdiffusion segment: error: cannot write in {locked}: Permission denied"], r.stderr


@pytest.mark.parametrize("extra, message", [
    (["--unsupervised", "256"], "a palette PNG holds at most 255 classes, this run has 256"),
    (["--classes", ",".join(f"c{i}" for i in range(300))], "a palette PNG holds at most 255 classes, this run has 300"),
])
def test_png_with_too_many_classes_is_refused_before_any_work(tmp_path, capsys, extra, message):
    """Item 8: found before the model is loaded (it does not exist here)."""
    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    code = main(["segment", str(image), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "seg.png"),
                 *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neon.tif"]


@pytest.mark.parametrize("outputs, message", [
    (["--out", "{image}"], "--out {image} is the input IMAGE"),
    (["--out", "seg.tif", "--confidence", "seg.tif"], "--confidence and --out are the same file"),
    (["--out", "seg.tif", "--coco", "seg.classes.json"], "--coco and the sidecar of --out are the same file"),
    (["--out", "{image}", "--overwrite"], "--out {image} is the input IMAGE"),
])
def test_outputs_that_collide_are_refused_even_with_overwrite(tmp_path, capsys, outputs, message):
    """Item 14: one line naming both, exit 2, before any work; the source imagery is untouched."""
    image = Path(shutil.copy(SAMPLE, tmp_path / "neon.tif"))
    before = image.read_bytes()
    args = [a.format(image=image) if "{" in a else (str(tmp_path / a) if a.endswith((".tif", ".json")) else a)
            for a in outputs]
    code = main(["segment", str(image), "--classes", "a,b", "--model", str(tmp_path / "no-model"), *args,
                 "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message.format(image=image) in err and len(err.splitlines()) == 1, err
    assert image.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["neon.tif"]


@pytest.mark.parametrize("stem_bytes, what", [(246, "--out"), (230, "the sidecar of --out")])
def test_an_output_name_too_long_for_the_file_system_is_refused_before_any_work(tmp_path, capsys, stem_bytes, what):
    """Issue 27 case 10: a name the file system cannot hold (here the sidecar's, or the hidden
    temporary the output is written under) is one line, exit 2, before the model is loaded."""
    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    out = tmp_path / ("x" * stem_bytes + ".tif")
    code = main(["segment", str(image), "--classes", "a,b", "--model", str(tmp_path / "no-model"), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"maskdiffusion segment: error: {what} x") and "file name too long" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neon.tif"]


def test_no_output_folder_is_a_bad_path(tmp_path, capsys):
    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    code = main(["segment", str(image), "--classes", "a", "--out", str(tmp_path / "seg.tif"),
                 "--coco", str(tmp_path / "missing" / "seg.json")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and f"output folder {tmp_path / 'missing'} does not exist" in err


def test_staged_outputs_put_back_what_an_earlier_rename_replaced(tmp_path, monkeypatch):
    """A rename that fails midway through the commit: the targets renamed before it get their
    old contents back, and no temporary file is left."""
    import os

    from maskdiffusion.errors import OutputError
    from maskdiffusion.geo.atomic import StagedOutputs, write_text

    (tmp_path / "a.txt").write_text("old a")
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith("b.txt"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="cannot write .*b.txt: Input/output error"):
        with StagedOutputs():
            write_text(tmp_path / "a.txt", "new a")
            write_text(tmp_path / "b.txt", "new b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"


def test_a_commit_that_fails_names_the_file_that_failed(tmp_path, monkeypatch):
    """Issue 27 case 14: the old b.txt cannot be kept aside (no hard link, no rename): the
    message names b.txt, not a.txt (renamed just before), and both are as they were."""
    import os

    from maskdiffusion.errors import OutputError
    from maskdiffusion.geo.atomic import StagedOutputs, write_text

    (tmp_path / "a.txt").write_text("old a")
    (tmp_path / "b.txt").write_text("old b")
    real_link, real_replace = os.link, os.replace

    def link(src, dst, *a, **k):
        if str(src).endswith("b.txt"):
            raise OSError(errno.EMLINK, "Too many links")
        return real_link(src, dst, *a, **k)

    def replace(src, dst):
        if str(src).endswith("b.txt"):
            raise OSError(errno.EIO, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError) as error:
        with StagedOutputs():
            write_text(tmp_path / "a.txt", "new a")
            write_text(tmp_path / "b.txt", "new b")
    assert str(error.value) == f"cannot write {tmp_path / 'b.txt'}: Input/output error; nothing was written or replaced"
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "old a", "b.txt": "old b"}


@pytest.mark.parametrize("appears", ["seg.tif", "seg.classes.json"])
def test_an_output_that_appears_during_the_run_is_not_replaced(tmp_path, tiny_model_dir, monkeypatch, capsys,
                                                                appears):
    """Issue 27 case 2: without --overwrite, a file created at an output path after the check
    (here: when the first tile is done) is not replaced at the commit: one line, exit 2, the
    file as it was, and no other output or temporary file left."""
    from maskdiffusion.cli import segment as cli_segment

    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    real_update = cli_segment._ProgressBar.update

    def update(bar, step):
        if step.stage != "load" and not (tmp_path / appears).exists():
            (tmp_path / appears).write_text("made by someone else meanwhile")
        real_update(bar, step)

    monkeypatch.setattr(cli_segment._ProgressBar, "update", update)
    code = main(["segment", str(image), "--classes", "a,b", "--model", str(tiny_model_dir), "--tile-size", "256",
                 "--scale", "0.5", "--out", str(tmp_path / "seg.tif"), "--confidence", str(tmp_path / "conf.tif"),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == (f"maskdiffusion segment: error: {tmp_path / appears} exists (it appeared while the "
                                 "run was going); pass --overwrite to replace it"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["neon.tif", appears])
    assert (tmp_path / appears).read_text() == "made by someone else meanwhile"


def test_without_hard_links_an_output_that_appeared_is_still_refused(tmp_path, monkeypatch):
    """Issue 27 case 2 on a file system without hard links: checked right before the rename."""
    import os

    from maskdiffusion.errors import BadInputError
    from maskdiffusion.geo.atomic import StagedOutputs, write_text

    def no_links(*a, **k):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    with StagedOutputs(replace=False):
        write_text(tmp_path / "a.txt", "new a")
    with pytest.raises(BadInputError, match="b.txt exists"):
        with StagedOutputs(replace=False):
            write_text(tmp_path / "c.txt", "new c")
            write_text(tmp_path / "b.txt", "new b")
            (tmp_path / "b.txt").write_text("appeared")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"a.txt": "new a", "b.txt": "appeared"}


def test_temporaries_a_killed_run_left_are_removed_when_the_output_is_written_again(tmp_path, tiny_model_dir):
    """Issue 27 case 17: a SIGKILL before the commit leaves hidden .seg.<hex>.tmp.tif files; the
    next run writing seg.tif removes those of its own outputs, and nothing else."""
    image = shutil.copy(SAMPLE, tmp_path / "neon.tif")
    left = [".seg.0123456789ab.tmp.tif", ".seg.classes.0123456789ab.tmp.json", ".conf.fedcba987654.tmp.tif"]
    kept = [".other.0123456789ab.tmp.tif", ".seg.notes", ".seg.0123456789ab.tmp.tif.bak", "seg.0123456789ab.tmp.tif"]
    for name in left + kept:
        (tmp_path / name).write_bytes(b"half a file")
    assert main(["segment", str(image), "--classes", "a,b", "--model", str(tiny_model_dir), "--tile-size", "256",
                 "--scale", "0.5", "--out", str(tmp_path / "seg.tif"), "--confidence", str(tmp_path / "conf.tif"),
                 "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["neon.tif", "seg.tif", "seg.classes.json", "conf.tif",
                                                                 *kept])
    from maskdiffusion.geo.atomic import remove_stale_temporaries, temporary_path

    live = temporary_path(tmp_path / "seg.tif")
    live.write_bytes(b"being written by this process")
    remove_stale_temporaries(tmp_path / "seg.tif")
    assert live.exists(), "a temporary this process is writing is not stale"


@pytest.mark.parametrize("how, message", [
    (signal.SIGINT, "maskdiffusion segment: interrupted; nothing half-written was left"),
    (signal.SIGTERM, "maskdiffusion segment: terminated (SIGTERM); nothing half-written was left"),
], ids=["Ctrl-C", "SIGTERM"])
def test_a_signal_during_the_run_stops_it_and_leaves_nothing(tmp_path, tiny_model_dir, how, message):
    """Item 4: Ctrl-C exits 130, SIGTERM (docker stop, Slurm) 143, each with one line; no output,
    sidecar or temporary file is left, so the same command can simply be run again."""
    from maskdiffusion.geo.raster_io import write_raster

    image = write_raster(tmp_path / "big.tif", np.random.default_rng(0).integers(0, 256, (3, 2000, 2000), np.uint8))
    log = tmp_path / "stderr.txt"
    with open(log, "w") as err:
        proc = start_cli("segment", image, "--classes", "a,b", "--model", tiny_model_dir, "--tile-size", 256,
                         "--out", tmp_path / "seg.tif", "--confidence", tmp_path / "conf.tif", stderr=err)
        try:
            assert wait_for(lambda: "tile" in log.read_text(), proc=proc), log.read_text()
            os.kill(proc.pid, how)
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 128 + how and error_lines(text) == [message] and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "stderr.txt"]

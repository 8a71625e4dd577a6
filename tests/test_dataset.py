"""A dataset project: statuses, files, georeference, resume, the lock, every bad input, the
class memory and the exports, with the tiny model on a list of 14 images: 13 synthetic files
(two of them georeferenced GeoTIFFs, one unreadable; sizes and band counts differ) and one
missing file."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from cli_process import error_lines, run_cli
from maskdiffusion.cli import main
from maskdiffusion.core.memory import ClassMemory
from maskdiffusion.core.params import SegmentParams
from maskdiffusion.dataset import (
    Project,
    ProjectError,
    ProjectLockedError,
    ProjectMismatchError,
    Status,
    draft,
    export_project,
)
from maskdiffusion.engine import drain, iter_segment, segment
from maskdiffusion.errors import BadInputError, OutputError
from maskdiffusion.geo.raster_io import read_image, read_input
from maskdiffusion.geo.synthetic import write_potsdam_like

CLASSES = "road, tree"
PARAMS = SegmentParams(tile_size=128, overlap=0)
GEO_TRANSFORM = from_origin(366000.0, 5808000.0, 0.5, 0.5)


def _image(rng, h, w, bands):
    shape = (h, w) if bands == 1 else (h, w, bands)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """13 files listed in ``images.txt`` in this order: the first five to do are a gray PNG,
    an RGBA PNG, the two GeoTIFFs and a uint16 TIFF; then PNG/JPEG photos; one unreadable;
    and last a file the list names that does not exist."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(7)
    names = ["a_gray.png", "b_rgba.png", "c_broken.png"]
    Image.fromarray(_image(rng, 80, 72, 1)).save(folder / "a_gray.png")
    Image.fromarray(_image(rng, 64, 96, 4)).save(folder / "b_rgba.png")
    (folder / "c_broken.png").write_text("not an image")
    potsdam = tmp_path_factory.mktemp("potsdam")
    paths = write_potsdam_like(potsdam, "top_potsdam_2_10", size=128, seed=1)
    for key in ("image", "world_file"):
        shutil.copy(paths[key], folder / paths[key].name)
    names.append(paths["image"].name)
    with rasterio.open(folder / "e_geo.tif", "w", driver="GTiff", width=112, height=96, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=GEO_TRANSFORM) as dst:
        dst.write(np.moveaxis(_image(rng, 96, 112, 3), -1, 0))
    names.append("e_geo.tif")
    with rasterio.open(folder / "f_uint16.tif", "w", driver="GTiff", width=64, height=64, count=1,
                       dtype="uint16") as dst:
        dst.write(rng.integers(0, 4000, (1, 64, 64), dtype=np.uint16))
    names.append("f_uint16.tif")
    for i in range(7):
        name = f"photo_{i}.{'jpg' if i % 3 == 0 else 'png'}"
        Image.fromarray(_image(rng, 64 + 16 * (i % 3), 64 + 32 * (i % 2), 3)).save(folder / name)
        names.append(name)
    (folder / "images.txt").write_text("# the dataset\n" + "\n".join(names) + "\nz_missing.png\n")
    return folder


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from maskdiffusion.model.loading import load_model

    return load_model(str(tiny_model_dir), "cpu", "fp32")


def make(out: Path, images: Path, classes=CLASSES, **options) -> Project:
    options.setdefault("params", PARAMS)
    options.setdefault("model", "random:tiny")
    return Project.create(out, images / "images.txt", classes, **options)


def paint(labels: np.ndarray, value: int) -> tuple[np.ndarray, np.ndarray]:
    """The annotator's correction: a block of ``value`` in the top-left corner."""
    labels = labels.copy()
    edited = np.zeros(labels.shape, bool)
    edited[:20, :24] = True
    labels[edited] = value
    return labels, edited


def test_walk_five_images_then_a_restart_resumes_at_the_sixth(images, model, tmp_path):
    """Statuses, files, label values, sidecars naming their image, georeference kept, the
    unreadable image failed with its reason, a drafted image waiting, and resume."""
    out = tmp_path / "out"
    with make(out, images) as project:
        assert len(project) == 14 and project.counts() == {"to do": 12, "drafted": 0, "corrected": 0, "done": 0,
                                                           "failed": 2}
        assert "no such file" in project.entry(13).reason
        broken = project.entry(2)
        assert broken.status is Status.FAILED and "c_broken.png" in broken.reason and "not an image" in broken.reason
        walked = []
        for _ in range(5):
            i = project.next_todo()
            ready = drain(draft(project, i, model))
            assert ready.source == "model" and project.entry(i).status is Status.DRAFTED
            assert ready.labels.shape == ready.image.shape[:2] and ready.state is not None
            labels, edited = paint(ready.labels, 2)
            path = project.save_labels(i, labels, edited=edited)
            walked.append(i)
            entry = project.entry(i)
            assert entry.status is Status.CORRECTED and path == out / "labels" / f"{entry.name}.tif"
            saved, geo = read_image(path)
            assert np.array_equal(saved, labels)
            side = json.loads(path.with_suffix(".classes.json").read_text())
            assert side["label_values"] == {"0": "unlabelled", "1": "road", "2": "tree"}
            assert (path.parent / side["image"]).resolve() == entry.path
            image_geo = read_input(entry.path)[1]
            assert geo.crs == image_geo.crs and geo.transform == image_geo.transform
        assert [project.entry(i).name for i in walked] == ["a_gray", "b_rgba", "top_potsdam_2_10_RGBIR", "e_geo",
                                                           "f_uint16"]
        assert read_image(project.labels_path(walked[2]))[1].crs == "EPSG:32633"
        assert read_image(project.labels_path(walked[3]))[1].transform == tuple(GEO_TRANSFORM)[:6]
        sixth = project.next_todo()
        drain(draft(project, sixth, model))  # drafted ahead, then the window closes
    with pytest.raises(ProjectError, match="no project"):
        Project.open(tmp_path / "elsewhere")
    with Project.open(out, CLASSES) as again:
        assert again.next_todo() == sixth == 6
        assert [again.entry(i).status for i in walked] == [Status.CORRECTED] * 5
        assert again.entry(sixth).status is Status.DRAFTED
        ready = drain(draft(again, sixth, "no-such-model"))  # its draft is kept: no model is loaded
        assert ready.source == "draft" and ready.state is not None
        back = drain(draft(again, walked[0], "no-such-model"))
        labels, edited = paint(read_image(again.labels_path(walked[0]))[0], 2)
        assert back.source == "labels" and np.array_equal(back.labels, labels) and np.array_equal(back.edited, edited)


def test_a_second_window_is_refused_naming_who_holds_the_project_and_a_dead_holder_is_not(images, tmp_path):
    out = tmp_path / "out"
    make(out, images).close()
    with Project.open(out):
        with pytest.raises(ProjectLockedError, match=f"this process .*process {os.getpid()}"):
            Project.open(out)
        assert Project.open(out, lock=False).counts()["to do"] == 12  # reading needs no lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from maskdiffusion.dataset import Project; "
         "p = Project.open(sys.argv[1]); print('open', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(ProjectLockedError, match=f"another process: maskdiffusion, process {holder.pid}"):
            Project.open(out)
        r = run_cli("dataset", out, "--reset-memory")
        assert r.returncode == 2 and f"process {holder.pid}" in error_lines(r.stderr)[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with Project.open(out) as project:  # the dead holder's lock went with it
        assert project.writable


def test_bad_sources_and_output_folders_are_refused_with_one_message(images, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no image files in"):
        Project.create(tmp_path / "out", tmp_path / "empty", CLASSES)
    before = sorted(p.name for p in images.iterdir())
    with pytest.raises(BadInputError, match="is or contains the input folder"):
        Project.create(images, images, CLASSES)
    with pytest.raises(BadInputError, match="is or contains the input folder"):
        Project.create(images.parent, images / "images.txt", CLASSES)
    assert sorted(p.name for p in images.iterdir()) == before
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    r = run_cli("dataset", locked, "--images", images, "--classes", CLASSES, obey_permissions=True)
    assert r.returncode == 1 and error_lines(r.stderr) == [
        f"maskdiffusion dataset: error: cannot write in {locked}: Permission denied"], r.stderr
    assert not list(locked.iterdir())


def test_another_class_list_says_so_and_a_new_project_keeps_the_old_files(images, model, tmp_path):
    out = tmp_path / "out"
    with make(out, images) as project:
        project.save_labels(0, np.ones((80, 72), np.uint8))
    with pytest.raises(ProjectMismatchError, match="made with the classes road, tree, not water, sand"):
        make(out, images, "water, sand")
    with pytest.raises(ProjectMismatchError, match="road, tree"):
        Project.open(out, "water, sand")
    with pytest.raises(ProjectMismatchError, match="other parameters .*tile_size"):
        make(out, images, params=SegmentParams(tile_size=256))
    code = main(["dataset", str(out), "--images", str(images / "images.txt"), "--classes", "water,sand"])
    assert code == 2
    with make(out, images, "water, sand", new=True) as fresh:
        assert [c.name for c in fresh.classes] == ["water", "sand"] and fresh.counts()["to do"] == 12
    previous = next(out.glob("previous-*"))
    assert (previous / "labels" / "a_gray.tif").is_file() and (previous / "maskdiffusion_project.json").is_file()


def test_an_image_that_cannot_be_segmented_fails_with_its_reason_and_the_rest_go_on(images, model, tmp_path):
    """A band the image lacks (--bands 3,0,1 on an RGB photo) and a file broken after the
    project was made: each is marked failed with the reason; the next image is still to do."""
    copy = tmp_path / "images"
    shutil.copytree(images, copy)
    with make(tmp_path / "out", copy, params=PARAMS.replace(bands=(3, 0, 1))) as project:
        potsdam = 3
        assert drain(draft(project, potsdam, model)).labels.shape == (128, 128)  # RGBIR: has band 3
        photo = project.next_todo(after=7)
        with pytest.raises(BadInputError, match="band 3"):
            drain(draft(project, photo, model))
        assert project.entry(photo).status is Status.FAILED and "band 3" in project.entry(photo).reason
        (copy / "a_gray.png").write_bytes(b"\x89PNG broken")
        with pytest.raises(BadInputError):
            drain(draft(project, 0, model))
        assert project.entry(0).status is Status.FAILED and project.next_todo() == 1


def test_a_full_disk_while_saving_leaves_the_previous_labels_whole(images, model, tmp_path, monkeypatch):
    import builtins

    import maskdiffusion.geo.raster_io as raster_io

    with make(tmp_path / "out", images) as project:
        first = np.ones((80, 72), np.uint8)
        path = project.save_labels(0, first)
        before = path.read_bytes(), path.with_suffix(".classes.json").read_bytes()
        real_open = builtins.open

        def full(file, mode="r", *args, **kwargs):
            if "w" in mode and ".tmp." in str(file):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(file, mode, *args, **kwargs)

        monkeypatch.setattr(raster_io, "open", full, raising=False)
        with pytest.raises(OutputError, match="No space left on device"):
            project.save_labels(0, np.full((80, 72), 2, np.uint8), status="done")
        assert (path.read_bytes(), path.with_suffix(".classes.json").read_bytes()) == before
        assert project.entry(0).status is Status.CORRECTED
        assert not [p for p in path.parent.iterdir() if ".tmp." in p.name]


def test_labels_of_another_size_or_with_values_past_the_classes_are_refused(images, tmp_path):
    with make(tmp_path / "out", images) as project:
        with pytest.raises(BadInputError, match="72x80 px"):
            project.save_labels(0, np.ones((10, 10), np.uint8))
        with pytest.raises(BadInputError, match="0 \\(unlabelled\\) to 2"):
            project.save_labels(0, np.full((80, 72), 3, np.uint8))
        with pytest.raises(BadInputError, match="save the labels"):
            project.mark(1, "done")
        assert not (tmp_path / "out" / "labels" / "a_gray.tif").exists()


# ---------------------------------------------------------------------------------- the class memory


def test_without_memory_the_paper_preset_is_bit_identical(images, model, tmp_path):
    image = read_input(images / "e_geo.tif")[0]
    paper = segment(image, CLASSES, model, PARAMS)
    mixed = drain(iter_segment(image, CLASSES, model, PARAMS, prototype_memory=_memory_of("sand", 7)))
    assert np.array_equal(mixed.labels, paper.labels), "a memory that knows none of the classes changes nothing"
    assert np.array_equal(mixed.confidence, paper.confidence)
    with make(tmp_path / "out", images, memory=False) as project:
        project.save_labels(0, np.ones((80, 72), np.uint8))
        ready = drain(draft(project, 4, model))
        assert not project.memory.images and np.array_equal(ready.labels, paper.labels)


def _memory_of(name: str, dims: int) -> ClassMemory:
    memory = ClassMemory()
    memory.update("x", np.ones((dims, 2, 2), np.float32), np.ones((32, 32), np.uint8), [name], 16)
    return memory


def test_the_memory_mixes_each_prototype_as_documented():
    import torch

    memory = ClassMemory(n0=4.0)
    features = np.zeros((3, 2, 2), np.float32)
    features[0, :, 0], features[1, :, 1] = 1, 1  # left cells along axis 0, right cells along axis 1
    labels = np.zeros((32, 32), np.uint8)
    labels[:, :16] = 1
    memory.update("a", features, labels, ["road", "tree"], stride=16)
    assert memory.counts(["road", "tree"]).tolist() == [2.0, 0.0]
    protos = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    mixed = memory.mix(protos, ["road", "tree"])
    a = 2 / (2 + 4)
    assert torch.allclose(mixed[0], (1 - a) * protos[0] + a * torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(mixed[1], protos[1]), "a class the memory does not know keeps its prototype exactly"
    memory.update("a", features, np.full((32, 32), 2, np.uint8), ["road", "tree"], stride=16)
    assert memory.counts(["road", "tree"]).tolist() == [0.0, 4.0], "an image corrected again replaces its part"
    with pytest.raises(BadInputError, match="another model"):
        memory.mix(torch.zeros(2, 5), ["road", "tree"])


def _sand(labels) -> tuple[float, float]:
    """The share of 'sand' (value 3) inside the painted square, and more than a grid cell
    (16 px, the reach of the scores' bilinear interpolation) away from it."""
    square, near = np.zeros(labels.shape, bool), np.zeros(labels.shape, bool)
    square[32:96, 32:96], near[16:112, 16:112] = True, True
    sand = np.asarray(labels) == 3
    return sand[square].mean(), sand[~near].mean()


def test_corrections_teach_the_next_draft_and_a_class_added_by_example_is_known_there(images, model, tmp_path):
    """Image 1 corrected with a third class 'sand' painted by example on a bright square;
    image 2 (the same pixels under another name) is drafted with the memory: 'sand' is a class
    of its draft, known from memory alone, and wins in the square, not away from it; its
    refinement keeps it. A draft made before the
    correction catches up without a model; marking back to do or a reset forgets."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 80, (128, 128, 3), dtype=np.uint8)
    pixels[32:96, 32:96] = (250, 240, 200)
    for name in ("one", "two", "three"):
        Image.fromarray(pixels).save(folder / f"{name}.png")
    with Project.create(tmp_path / "out", folder, CLASSES, params=PARAMS, model="random:tiny") as project:
        first = drain(draft(project, 0, model))
        ahead = drain(draft(project, 2, model))  # drafted ahead, before the correction
        labels = first.labels.copy()
        labels[32:96, 32:96] = 3
        project.save_labels(0, labels, ["road", "tree", "sand"])
        assert [c.name for c in project.classes] == ["road", "tree", "sand"]
        assert (tmp_path / "out" / "memory" / "one.npz").is_file()
        assert project.memory.counts(["road", "tree", "sand"]).min() > 0
        second = drain(draft(project, 1, model))
        assert [c.name for c in second.classes] == ["road", "tree", "sand"]
        assert second.state.from_text == (True, True, False) and (second.state.prior_share > 0).all()
        inside, outside = _sand(second.labels)
        assert inside > 0.9 and outside < 0.1
        assert _sand(second.session().refine())[0] > 0.9
        session = second.session()
        session.delete_classes([1])  # its class layer deleted in napari: the memory's prior follows
        assert [c.name for c in session.classes] == ["road", "sand"] and session.state.prior.shape[0] == 2
        assert (session.refine()[32:96, 32:96] == 2).mean() > 0.9, "sand is label 2 now"
        refreshed = drain(draft(project, 2, "no-such-model"))  # the stored draft catches up, no model
        assert refreshed.source == "draft" and refreshed.state.n_classes == 3
        assert _sand(refreshed.labels)[0] > 0.9 and not (ahead.labels == 3).any()
        project.mark(0, Status.TODO)
        assert not project.memory.images and not (tmp_path / "out" / "memory" / "one.npz").exists()
        project.mark(0, Status.CORRECTED)
        assert project.memory.knows("sand")
        project.reset_memory()
        assert not project.memory.images and not list((tmp_path / "out" / "memory").iterdir())
        again = drain(draft(project, 2, "no-such-model"))
        assert np.array_equal(again.labels, ahead.labels), "an empty memory gives the paper's draft back"


# ---------------------------------------------------------------------------------- export and CLI


@pytest.fixture(scope="module")
def done_project(images, tmp_path_factory) -> Path:
    """A project with three images done (one a GeoTIFF), one corrected."""
    out = tmp_path_factory.mktemp("done") / "out"
    with make(out, images) as project:
        for i in (0, 4, 8):
            h, w = read_input(project.entry(i).path)[0].shape[:2]
            labels = np.ones((h, w), np.uint8)
            labels[: h // 2] = 2
            labels[0, 0] = 0
            project.save_labels(i, labels, status="done")
        project.save_labels(9, np.ones(read_input(project.entry(9).path)[0].shape[:2], np.uint8))
    return out


def test_export_coco_isprs_and_folders_of_the_done_images(done_project, tmp_path):
    from maskdiffusion.geo.exports import rle_decode

    project = Project.open(done_project, lock=False)
    coco_files = export_project(project, tmp_path / "coco", "coco")
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [i["file_name"].split("/")[-1] for i in coco["images"]] == ["a_gray.png", "e_geo.tif", "photo_2.png"]
    assert [c["name"] for c in coco["categories"]] == ["road", "tree"]
    first = [a for a in coco["annotations"] if a["image_id"] == 1 and a["category_id"] == 2][0]
    assert rle_decode(first["segmentation"])[1:40].all() and len(coco_files) == 2
    export_project(project, tmp_path / "isprs", "isprs")
    rgb, geo = read_image(tmp_path / "isprs" / "e_geo_label.tif")
    assert tuple(rgb[0, 1]) == project.classes[1].color and tuple(rgb[0, 0]) == (0, 0, 0)
    assert geo.crs == "EPSG:32633" and geo.transform == tuple(GEO_TRANSFORM)[:6]
    export_project(project, tmp_path / "folders", "folders", val_fraction=0.5)
    split = (tmp_path / "folders" / "split.csv").read_text().splitlines()
    assert split[0] == "image,label,split" and len(split) == 4
    for row in split[1:]:
        image, labels, part = row.split(",")
        assert (tmp_path / "folders" / image).is_file() and part in ("train", "val")
        shape = read_input(tmp_path / "folders" / image)[0].shape[:2]
        assert read_image(tmp_path / "folders" / labels)[0].shape == shape
    classes = json.loads((tmp_path / "folders" / "classes.json").read_text())
    assert classes["label_values"] == {"0": "unlabelled", "1": "road", "2": "tree"}
    with pytest.raises(BadInputError, match="exists"):
        export_project(project, tmp_path / "folders", "folders")


def test_export_and_dataset_commands(done_project, images, tmp_path, capsys):
    assert main(["export", str(done_project), "--format", "folders", "--out", str(tmp_path / "f")]) == 0
    assert "for 3 done images" in capsys.readouterr().err
    assert main(["dataset", str(done_project)]) == 0
    out = capsys.readouterr().out
    assert "14 images: 8 to do, 0 drafted, 1 corrected, 3 done, 2 failed" in out
    assert "next to do: #2 b_rgba.png" in out and "c_broken.png: " in out
    empty = tmp_path / "empty"
    assert main(["dataset", str(empty), "--images", str(images / "images.txt"), "--classes", CLASSES,
                 "--tile-size", "128", "--overlap", "0", "--model", "random:tiny", "--no-memory"]) == 0
    assert "memory: off" in capsys.readouterr().out
    assert main(["export", str(empty), "--format", "coco"]) == 2
    assert "nothing to export" in capsys.readouterr().err

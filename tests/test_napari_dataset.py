"""The dock's Dataset tab on a real viewer with the tiny model: a folder of 12 images (two of them
georeferenced GeoTIFFs, sizes and band counts differing) walked with Next, the files, statuses
and georeference it leaves, a restart resuming where the annotator stopped, and a second
window kept out."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import rasterio
from PIL import Image
from rasterio.transform import from_origin

from annotator_helpers import GUI, TIMEOUT_MS, make_dock, one_class_per_pixel, stroke, wait_idle
from maskdiffusion.dataset import Project, Status
from maskdiffusion.geo.raster_io import read_image

pytestmark = GUI

CLASSES = ["road", "tree"]


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MASKDIFFUSION_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def photos(tmp_path):
    """12 images: two georeferenced GeoTIFFs first, then PNGs of other sizes, one of them gray."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        transform = from_origin(366000 + 48 * i, 5808000, 0.5, 0.5)
        with rasterio.open(folder / f"a{i}_survey.tif", "w", driver="GTiff", width=96, height=64, count=3,
                           dtype="uint8", crs="EPSG:32633", transform=transform) as dst:
            dst.write(rng.integers(0, 256, (3, 64, 96), dtype=np.uint8))
    for i in range(10):
        shape = (64 + 16 * (i % 2), 64) if i == 3 else (64 + 16 * (i % 2), 64, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"b{i:02d}.png")
    return folder


def dataset_dock(make_napari_viewer, qtbot, model_dir, photos, out):
    viewer = make_napari_viewer()
    dock = make_dock(viewer, qtbot, model_dir, CLASSES, tile=64)
    panel = dock.dataset
    panel.images_edit.setText(str(photos))
    panel.output_edit.setText(str(out))
    return viewer, dock, panel


def test_five_images_walked_with_next_leave_their_labels_and_a_restart_resumes_at_the_sixth(
        make_napari_viewer, qtbot, tiny_model_dir, photos, tmp_path):
    out = tmp_path / "labels_out"
    viewer, dock, panel = dataset_dock(make_napari_viewer, qtbot, tiny_model_dir, photos, out)
    panel.open_button.click()
    wait_idle(dock, qtbot)
    assert panel.project is not None and panel.index == 0 and panel.image_list.count() == 12
    layers_before = None
    for i in range(5):
        qtbot.waitUntil(lambda i=i: panel.shown == i, timeout=TIMEOUT_MS)
        wait_idle(dock, qtbot)
        annotation = panel.annotation
        assert one_class_per_pixel(annotation)
        name = panel.project.entry(i).name
        assert viewer.layers[name].data.shape[:2] == annotation.session().labels.shape
        assert [ly.name for ly in viewer.layers] == [name, *CLASSES], "one image layer, a layer a class: no pile"
        assert layers_before is None or all(a is b for a, b in zip(layers_before, viewer.layers)), "same layers"
        layers_before = list(viewer.layers)
        assert dock.saved_label.text().startswith(f"{name}: {name}"), "Save labels… names the image in view"
        stroke(qtbot, dock, viewer.layers["tree"], [(10, 10)])
        panel.done_button.click() if i == 4 else panel.next_button.click()
    wait_idle(dock, qtbot)
    qtbot.waitUntil(lambda: sum(e.status is not Status.TODO and e.status is not Status.DRAFTED
                                for e in panel.project.images) == 5, timeout=TIMEOUT_MS)
    statuses = [e.status for e in panel.project.images]
    assert statuses[:4] == [Status.CORRECTED] * 4 and statuses[4] is Status.DONE
    for i in range(5):
        entry = panel.project.entry(i)
        labels, geo = read_image(entry.labels)
        assert labels[10, 10] == 2 and labels.shape == read_image(entry.path)[0].shape[:2]
        if i < 2:
            assert geo.crs == "EPSG:32633" and geo.transform[2] == 366000 + 48 * i, "georeference kept"
    dock.dataset.close_project()
    viewer.close()

    viewer, dock, panel = dataset_dock(make_napari_viewer, qtbot, tiny_model_dir, photos, out)
    panel.images_edit.setText("")
    panel.open_button.click()
    qtbot.waitUntil(lambda: panel.shown == 5, timeout=TIMEOUT_MS)
    assert [c.name for c in dock.segment.classes()] == CLASSES, "the project's classes hold"


def test_a_second_window_on_the_project_is_told_who_holds_it(make_napari_viewer, qtbot, tiny_model_dir, photos,
                                                             tmp_path):
    from napari.utils.notifications import notification_manager

    out = tmp_path / "out"
    _, dock, panel = dataset_dock(make_napari_viewer, qtbot, tiny_model_dir, photos, out)
    panel.open_button.click()
    wait_idle(dock, qtbot)
    _, dock2, panel2 = dataset_dock(make_napari_viewer, qtbot, tiny_model_dir, photos, out)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        assert not panel2.open_project()
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert seen and "is open in" in seen[-1].message and "close it there first" in seen[-1].message
    assert Project.exists(out) and panel2.project is None


def test_an_output_folder_inside_the_images_is_refused_and_nothing_is_written(make_napari_viewer, qtbot,
                                                                              tiny_model_dir, photos):
    before = sorted(p.name for p in photos.iterdir())
    _, dock, panel = dataset_dock(make_napari_viewer, qtbot, tiny_model_dir, photos, photos)
    assert not panel.open_project()
    assert sorted(p.name for p in photos.iterdir()) == before

"""One annotation however its layers came (a run, File › Open of a result, a label file, a session),
and what a person does to its layers in napari's layer list: delete, rename, reorder, close and
open again, cancel a run. Real viewer, tiny model; workers on the test's thread unless the
thread is the point."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from annotator_helpers import (
    GUI,
    PLUGIN,
    TIMEOUT_MS,
    class_names,
    make_dock,
    one_class_per_pixel,
    press,
    run_and_wait,
    stroke,
    wait_idle,
)
from maskdiffusion.errors import BadInputError, NeedsFeaturesError
from maskdiffusion.geo.raster_io import read_image
from maskdiffusion.napari import layers

pytestmark = GUI

FOUR = ["tree", "grass", "sand", "road"]


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MASKDIFFUSION_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def neon(tmp_path):
    """The NEON sample as a file of the user's (so that saved sidecars can name it)."""
    from maskdiffusion.napari.samples import SAMPLE_DIR

    path = tmp_path / "images" / "neon.tif"
    path.parent.mkdir()
    shutil.copy(SAMPLE_DIR / "neon_OSBS_029.tif", path)
    return path


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tiny_model_dir, neon):
    viewer = make_napari_viewer()
    viewer.open(str(neon))
    return viewer, make_dock(viewer, qtbot, tiny_model_dir, FOUR)


def opened(dock, qtbot, viewer, path):
    """File › Open of ``path`` (napari picks the reader, as for a person); its annotation."""
    before = set(dock.state.annotations)
    viewer.open(str(path), plugin=None)
    qtbot.waitUntil(lambda: bool(set(dock.state.annotations) - before), timeout=TIMEOUT_MS)
    wait_idle(dock, qtbot)
    return dock.state.annotations[(set(dock.state.annotations) - before).pop()]


def file_matches(path, annotation) -> bool:
    """The label file holds exactly what the layers show."""
    return np.array_equal(read_image(str(path))[0], annotation.session().labels)


def test_deleting_a_class_layer_deletes_its_class_and_undo_brings_it_back(annotator, qtbot, tmp_path):
    """Item 1: the class values came from a layer's position, so after deleting grass a stroke in
    sand was stored as grass. Now grass's pixels become unlabelled (one step), sand's stroke is
    sand, and Undo brings grass back with its pixels and a layer."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    grass = annotation.session().labels == 2
    viewer.layers.remove("grass")
    wait_idle(dock, qtbot)
    assert class_names(annotation) == ["tree", "sand", "road"] and "grass" not in viewer.layers
    assert not (annotation.session().labels[grass]).any(), "grass's pixels are unlabelled"
    sand = viewer.layers["sand"]
    y, x = map(int, np.argwhere(grass)[len(np.argwhere(grass)) // 2])
    stroke(qtbot, dock, sand, [(y, x)])
    assert annotation.session().labels[y, x] == 2 and annotation.session().classes[1].name == "sand"
    assert "grass" not in viewer.layers and one_class_per_pixel(annotation)
    dock.save_labels(tmp_path / "labels.tif")
    sidecar = json.loads((tmp_path / "labels.classes.json").read_text())
    assert sidecar["label_values"] == {"0": "unlabelled", "1": "tree", "2": "sand", "3": "road"}
    assert file_matches(tmp_path / "labels.tif", annotation)
    annotation.undo(())
    wait_idle(dock, qtbot)
    annotation.undo(())
    wait_idle(dock, qtbot)
    assert class_names(annotation) == FOUR and (annotation.session().labels[grass] == 2).all()
    assert "grass" in viewer.layers and one_class_per_pixel(annotation)


def test_a_class_that_cannot_be_deleted_keeps_its_layer_and_pixels(annotator, qtbot, monkeypatch):
    """A deletion the session refuses (a memory prior once did: "a prior needs one prototype…")
    left the class without its layer, the layers no longer showing the map. The layer comes
    back with its pixels, and the reason is said."""
    from maskdiffusion.session import Session

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    before = annotation.session().labels.copy()
    said = []
    annotation.notify = said.append

    def refuse(*_args, **_kwargs):
        raise BadInputError("cannot delete it")

    monkeypatch.setattr(Session, "delete_classes", refuse)
    viewer.layers.remove("grass")
    wait_idle(dock, qtbot)
    assert [ly.name for ly in annotation.ordered_layers()] == FOUR and one_class_per_pixel(annotation)
    assert np.array_equal(annotation.session().labels, before) and said == ["kept 'grass': cannot delete it"]


def test_deleting_several_class_layers_at_once_is_one_step_and_napari_survives(annotator, qtbot):
    """Item 3: napari's own delete button on four selected class layers (crashed napari before)."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    viewer.layers.selection = {viewer.layers[name] for name in ("grass", "sand", "road")}
    viewer.layers.remove_selected()
    wait_idle(dock, qtbot)
    assert class_names(annotation) == ["tree"] and [ly.name for ly in viewer.layers] == ["neon", "tree"]
    assert set(np.unique(annotation.session().labels)) <= {0, 1}
    assert [step.what for step in annotation.session().history] == ["delete class"], "one step for three layers"
    dock.refine.undo_button.click()
    wait_idle(dock, qtbot)
    assert class_names(annotation) == FOUR and one_class_per_pixel(annotation)
    viewer.window._qt_window.grab()  # a frame after the removals and the layers coming back


def test_cancel_after_rows_streamed_removes_the_new_layers_one_per_frame(make_napari_viewer, qtbot, tiny_model_dir,
                                                                       neon):
    """Item 3: Cancel after rows were painted removed the new layers in one turn; napari crashed
    at the next repaint. They go one per drawn frame, and the viewer is as before."""
    viewer = make_napari_viewer(show=True)
    viewer.open(str(neon))
    dock = make_dock(viewer, qtbot, tiny_model_dir, FOUR, synchronous=False)
    dock.segment.parameters["tile_size"].value = 128
    canvas = viewer.window._qt_viewer.canvas
    draws, removals = [], []
    canvas.events.draw.connect(lambda _: draws.append(1))
    viewer.layers.events.removed.connect(lambda _: removals.append(len(draws)))
    worker = dock.segment.run()

    def cancel_once_painted(_):
        if any(ly.metadata.get("kind") == "class" and ly.data.any() for ly in viewer.layers):
            dock.segment.cancel_button.click()

    worker.yielded.connect(cancel_once_painted)
    qtbot.waitUntil(lambda: not dock.segment.running and [ly.name for ly in viewer.layers] == ["neon"],
                    timeout=TIMEOUT_MS)
    assert len(removals) == 4 and len(set(removals)) == 4, "a frame is drawn between two removals"
    assert "cancelled" in dock.segment.status.text() and not dock.state.annotations


def test_cancel_pressed_after_the_last_tile_was_computed_still_cancels(make_napari_viewer, qtbot, tiny_model_dir,
                                                                       neon, monkeypatch):
    """Cancel while the rows are still being shown but the worker has already finished: the
    run's result arrives after the Cancel and must not be added (it was, with "done")."""
    import threading

    import maskdiffusion.engine as engine

    computed = threading.Event()
    segment_planes = engine.iter_segment_planes

    def observed(*args, **kwargs):
        results = yield from segment_planes(*args, **kwargs)
        computed.set()
        return results

    monkeypatch.setattr(engine, "iter_segment_planes", observed)
    viewer = make_napari_viewer(show=True)
    viewer.open(str(neon))
    dock = make_dock(viewer, qtbot, tiny_model_dir, FOUR, synchronous=False)
    dock.segment.parameters["tile_size"].value = 128
    worker = dock.segment.run()

    def cancel_once_computed(_):
        if not worker.abort_requested and any(ly.metadata.get("kind") == "class" and ly.data.any()
                                              for ly in viewer.layers):
            assert computed.wait(120)
            dock.segment.cancel_button.click()

    worker.yielded.connect(cancel_once_computed)
    qtbot.waitUntil(lambda: not dock.segment.running and [ly.name for ly in viewer.layers] == ["neon"],
                    timeout=TIMEOUT_MS)
    assert "cancelled" in dock.segment.status.text() and not dock.state.annotations


def test_the_dock_from_the_plugin_menu_owns_the_layers_of_its_run(make_napari_viewer, qtbot, tiny_model_dir, neon):
    """npe2 hands the dock a proxy of the viewer, through which every layer is a new proxy
    object: the run's layers were not its own, a second annotation adopted them, and strokes
    went to that one (no features, no Refine)."""
    viewer = make_napari_viewer(show=True)
    viewer.open(str(neon))
    _, dock = viewer.window.add_plugin_dock_widget(PLUGIN, "MaskDiffusion annotator")
    dock.state.synchronous = True
    box = dock.segment.model_box
    box.source_combo.setCurrentText(str(tiny_model_dir))
    box.device_combo.setCurrentText("cpu")
    box.load()
    qtbot.waitUntil(lambda: box.ready, timeout=TIMEOUT_MS)
    dock.segment.set_classes(FOUR)
    dock.segment.parameters["tile_size"].value = 256
    annotation = run_and_wait(dock, qtbot)
    qtbot.waitUntil(lambda: not dock._arrived, timeout=TIMEOUT_MS)
    assert list(dock.state.annotations.values()) == [annotation]
    road = viewer.layers["road"]
    stroke(qtbot, dock, road, [(60, 60), (60, 120)])
    assert annotation.owns(road) and annotation.session().edited.any() and annotation.session().can_refine
    assert one_class_per_pixel(annotation)


def test_a_renamed_layer_renames_its_class_and_reordering_changes_nothing(annotator, qtbot, tmp_path):
    """Item 5: the name typed in the layer list is the class's, in files and after class changes."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    before = annotation.session().labels.copy()
    viewer.layers["road"].name = "asphalt"
    wait_idle(dock, qtbot)
    assert class_names(annotation) == ["tree", "grass", "sand", "asphalt"]
    viewer.layers.move(viewer.layers.index(viewer.layers["asphalt"]), 1)
    assert np.array_equal(annotation.session().labels, before) and class_names(annotation)[3] == "asphalt"
    dock.refine.add_example_class("shadow", (10, 10, 10))
    wait_idle(dock, qtbot)
    assert "asphalt" in viewer.layers and "road" not in viewer.layers
    dock.save_labels(tmp_path / "labels.tif")
    sidecar = json.loads((tmp_path / "labels.classes.json").read_text())
    assert [c["name"] for c in sidecar["classes"]] == ["tree", "grass", "sand", "asphalt", "shadow"]
    viewer.layers["tree"].name = "grass"
    wait_idle(dock, qtbot)
    assert class_names(annotation)[:2] == ["grass [1]", "grass"], "napari's unique name is the class's"


def test_the_refine_tab_works_on_the_run_as_soon_as_it_is_shown(annotator, qtbot):
    """Item 6: the last class layer was selected after a run and the Refine tab showed nothing."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    dock.tabs.setCurrentIndex(1)
    assert dock.refine.refine_button.isEnabled() and dock.refine.run_combo.currentText() == "neon"
    stroke(qtbot, dock, viewer.layers["sand"], [(60, 60)])
    from qtpy.QtCore import Qt

    press(viewer, qtbot, Qt.Key_R, Qt.NoModifier)
    qtbot.waitUntil(lambda: annotation.session().last_step == "refine", timeout=TIMEOUT_MS)


def test_a_result_from_the_command_line_opens_as_one_annotation(make_napari_viewer, qtbot, tiny_model_dir, neon,
                                                                tmp_path):
    """Item 2: File › Open of a result's sidecar gave layers nobody bound: a stroke in a lower
    layer did not free the others, there was no undo, and saving back dropped the stroke."""
    from maskdiffusion.cli import main

    out = tmp_path / "results" / "neon_seg.tif"
    out.parent.mkdir()
    assert main(["segment", str(neon), "--classes", ",".join(FOUR), "--model", str(tiny_model_dir), "--out",
                 str(out), "--tile-size", "256", "--device", "cpu", "--dtype", "fp32"]) == 0
    viewer = make_napari_viewer()
    dock = make_dock(viewer, qtbot, tiny_model_dir, FOUR)
    annotation = opened(dock, qtbot, viewer, out.with_suffix(".classes.json"))
    assert [ly.name for ly in viewer.layers] == ["neon", *FOUR], "the image comes with its classes"
    assert class_names(annotation) == FOUR and annotation.source == {"kind": "labels", "path": str(out)}
    road = annotation.session().labels == 4
    y, x = map(int, np.argwhere(road)[0])
    stroke(qtbot, dock, viewer.layers["tree"], [(y, x)])
    assert viewer.layers["road"].data[y, x] == 0 and one_class_per_pixel(annotation)
    dock.refine.refine()
    assert dock.refine.status.text() == NeedsFeaturesError.message
    dock.save_labels()
    assert file_matches(out, annotation) and read_image(str(out))[0][y, x] == 1
    annotation.undo(())
    wait_idle(dock, qtbot)
    assert annotation.session().labels[y, x] == 4 and one_class_per_pixel(annotation)


def test_every_file_the_plugin_saves_opens_again_with_its_image_and_georeference(annotator, qtbot, tmp_path,
                                                                                make_napari_viewer, tiny_model_dir):
    """Item 2: *Save labels…*'s sidecar named a layer, not the image; the ISPRS writer's sidecar did
    not open; the label .tif opened as a grey image without georeference."""
    from maskdiffusion.napari.writers import write_isprs_rgb

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    saved = tmp_path / "out" / "labels.tif"
    saved.parent.mkdir()
    dock.save_labels(saved)
    isprs = tmp_path / "out" / "isprs.tif"
    write_isprs_rgb(str(isprs), [(ly.data, {"metadata": ly.metadata, "name": ly.name}, "labels")
                                 for ly in annotation.ordered_layers()])
    for path in (saved.with_suffix(".classes.json"), isprs.with_suffix(".classes.json"), saved):
        other = make_napari_viewer()
        dock2 = make_dock(other, qtbot, tiny_model_dir, FOUR)
        reopened = opened(dock2, qtbot, other, path)
        assert [ly.name for ly in other.layers] == ["neon", *FOUR], path.name
        assert np.array_equal(reopened.session().labels, annotation.session().labels), path.name
        assert other.layers["tree"].metadata["georeference"]["crs"].startswith("EPSG:326"), path.name
        assert reopened.image_layer is other.layers["neon"], path.name


def test_a_reopened_session_keeps_its_strokes_as_strokes(annotator, qtbot, tmp_path, make_napari_viewer,
                                                         tiny_model_dir):
    """Item 7: strokes opened as drafts (1, not 2), so the next refinement did not keep them."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    stroke(qtbot, dock, viewer.layers["sand"], [(30, 30)])
    folder = dock.refine.session_box.save(tmp_path / "neon")
    other = make_napari_viewer()
    dock2 = make_dock(other, qtbot, tiny_model_dir, FOUR)
    reopened = opened(dock2, qtbot, other, folder / "session.json")
    assert other.layers["sand"].data[30, 30] == layers.STROKE and reopened.session().edited[30, 30]
    assert np.array_equal(np.asarray(reopened.session().edited), np.asarray(annotation.session().edited))


def test_a_person_walks_run_delete_paint_rename_refine_undo_save_close_open_paint_save(annotator, qtbot, tmp_path):
    """The walk of the issue, every pixel with one class or none after every step, and the file
    holding exactly what the layers showed."""
    from qtpy.QtCore import Qt

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    assert one_class_per_pixel(annotation)
    viewer.layers.remove("grass")
    wait_idle(dock, qtbot)
    assert one_class_per_pixel(annotation)
    stroke(qtbot, dock, viewer.layers["sand"], [(100, 100), (110, 120)])
    assert one_class_per_pixel(annotation)
    viewer.layers["road"].name = "asphalt"
    wait_idle(dock, qtbot)
    assert one_class_per_pixel(annotation) and class_names(annotation) == ["tree", "sand", "asphalt"]
    dock.refine.refine_button.click()
    wait_idle(dock, qtbot)
    assert annotation.session().last_step == "refine" and one_class_per_pixel(annotation)
    viewer.layers.selection.active = viewer.layers["tree"]
    for _ in range(3):
        press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
        wait_idle(dock, qtbot)
        assert one_class_per_pixel(annotation)
    assert class_names(annotation) == ["tree", "sand", "road"], "refine, rename and the stroke undone"
    saved = tmp_path / "neon_labels.tif"
    dock.save_labels(saved)
    assert file_matches(saved, annotation)
    shown = annotation.session().labels.copy()
    viewer.layers.selection = set(viewer.layers)
    viewer.layers.remove_selected()
    wait_idle(dock, qtbot)
    assert not viewer.layers and not dock.state.annotations
    reopened = opened(dock, qtbot, viewer, saved.with_suffix(".classes.json"))
    assert np.array_equal(reopened.session().labels, shown) and class_names(reopened) == ["tree", "sand", "road"]
    assert dock.saved_label.text() == f"{reopened.name}: {saved.name}", "Save labels… says it saves back there"
    lowest = reopened.ordered_layers()[0]
    target = np.argwhere(reopened.session().labels == 3)[0]
    stroke(qtbot, dock, lowest, [tuple(int(c) for c in target)])
    assert one_class_per_pixel(reopened) and reopened.session().labels[tuple(target)] == 1
    dock.refine.refine_button.click()
    assert dock.refine.status.text() == NeedsFeaturesError.message
    dock.save_labels()
    assert file_matches(saved, reopened) and one_class_per_pixel(reopened)

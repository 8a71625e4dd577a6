"""The MaskDiffusion dock on a real napari viewer (needs a display: run under ``xvfb-run``) and the
tiny model: runs, cancel, strokes, undo from any layer, refinement, sessions, layout."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from maskdiffusion.napari import layers
from maskdiffusion.session_bundle import load_session

pytestmark = [
    pytest.mark.gui,
    pytest.mark.skipif(sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
                       reason="needs a display: run under xvfb-run -a (napari's canvas needs OpenGL)"),
]

PLUGIN = "napari-maskdiffusion"
CLASSES = ["tree", "ground", "road"]
TIMEOUT_MS = 120_000


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MASKDIFFUSION_CONFIG_DIR", str(tmp_path / "config"))


def dock_with_model_chosen(viewer, model_dir):
    """The annotator docked, the model chosen (on the CPU, fp32) but not loaded."""
    from maskdiffusion.napari.dock import AnnotatorDock

    dock = AnnotatorDock(viewer)
    viewer.window.add_dock_widget(dock, name="MaskDiffusion")
    box = dock.segment.model_box
    box.source_combo.setCurrentText(str(model_dir))
    box.device_combo.setCurrentText("cpu")
    box.precision_combo.setCurrentText("fp32")
    return dock


def make_dock(viewer, qtbot, model_dir, classes=CLASSES, tile=256):
    dock = dock_with_model_chosen(viewer, model_dir)
    box = dock.segment.model_box
    box.load()
    assert not dock.segment.run_button.isEnabled()
    qtbot.waitUntil(lambda: not box.loading, timeout=TIMEOUT_MS)
    assert box.ready
    dock.segment.set_classes(classes)
    dock.segment.parameters["tile_size"].value = tile
    dock.segment.parameters["overlap"].value = 0
    return dock


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tiny_model_dir):
    """A viewer with the NEON sample and the dock, the tiny model loaded on CPU."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "neon_osbs")
    return viewer, make_dock(viewer, qtbot, tiny_model_dir)


def run_and_wait(dock, qtbot):
    worker = dock.segment.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    return dock.state.run_of(dock.segment.image_layer())


def wait_refine(dock, qtbot):
    qtbot.waitUntil(lambda: dock.refine._worker is None and dock.refine._writing is None
                    and all(run.pending_writes == 0 and not run.busy for run in dock.state.runs.values()),
                    timeout=TIMEOUT_MS)


def one_class_per_pixel(run) -> bool:
    stack = np.stack([np.asarray(ly.data) != 0 for ly in run.layers])
    shown = np.where(stack.any(0), stack.argmax(0) + 1, 0)
    return bool((stack.sum(0) <= 1).all() and np.array_equal(shown, run.session(()).labels))


def stroke(qtbot, layer, points, label=layers.STROKE, size=12):
    """Paint as a person does (napari announces the stroke, the dock takes it at the next turn)."""
    layer.brush_size = size
    layer.selected_label = label
    for point in points:
        layer.paint(point, label)
    qtbot.wait(30)


def press(viewer, qtbot, key, modifier):
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier)
    qtbot.wait(30)


def test_run_gives_one_layer_per_class(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.semantic_check.setChecked(True)
    dock.segment.confidence_check.setChecked(True)
    dock.segment.run()
    assert not dock.segment.run_button.isEnabled() and dock.segment.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    assert dock.segment.status.text().startswith("done: 3 classes, 5 new layers")
    assert [ly.name for ly in viewer.layers] == ["neon_OSBS_029", *CLASSES, "semantic map", "confidence"]
    run = dock.state.run_of(viewer.layers["tree"])
    assert run is dock.state.run_of(viewer.layers["neon_OSBS_029"]) and one_class_per_pixel(run)
    assert np.array_equal(viewer.layers["semantic map"].data, run.session(()).labels)
    for spec, layer in zip(dock.segment.classes(), run.layers):
        assert layer.data.shape == (400, 400) and set(np.unique(layer.data)) == {0, layers.DRAFT}
        assert layer.selected_label == layers.STROKE
        for value in (layers.DRAFT, layers.STROKE):
            assert np.allclose(layer.colormap.map(np.array([value]))[0][:3] * 255, spec.color, atol=1)
        assert layer.metadata["georeference"]["crs"].startswith("EPSG:326")


def test_save_labels_writes_the_georeferenced_map_and_its_classes(annotator, qtbot, tmp_path):
    import json

    from maskdiffusion.geo.raster_io import read_image

    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    stroke(qtbot, viewer.layers["road"], [(30, 30)])
    written = dock.save_labels(tmp_path / "neon_labels.tif")
    labels, geo = read_image(written[0])
    assert np.array_equal(labels, run.session(()).labels) and geo.crs.startswith("EPSG:326")
    sidecar = json.loads((tmp_path / "neon_labels.classes.json").read_text())
    assert sidecar["label_values"] == {"0": "unlabelled", "1": "tree", "2": "ground", "3": "road"}
    png = dock.save_labels(tmp_path / "neon_labels.png")
    assert np.array_equal(read_image(png[0])[0], labels)


def test_save_labels_from_the_dialog_writes_on_a_worker_and_reports_a_bad_path_once(annotator, qtbot, tmp_path):
    """Unpacking the map and encoding the file took 0.5-0.7 s on the interface's thread at
    6000²: *Save labels…* returns at once and the file follows from a worker."""
    from napari.utils.notifications import notification_manager

    from maskdiffusion.geo.raster_io import read_image

    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "neon_labels.tif"
    assert dock.save_labels_soon(target) is not None
    assert not target.exists() and dock.saved_label.text() == "saving …"
    qtbot.waitUntil(lambda: dock.saved_label.text().startswith("saved"), timeout=TIMEOUT_MS)
    assert np.array_equal(read_image(str(target))[0], run.session(()).labels)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        assert dock.save_labels_soon(out / "labels.jpg") is None
        assert dock.save_labels_soon(target / "inside a file.tif") is not None
        qtbot.waitUntil(lambda: len(seen) == 2, timeout=TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert ".tif, .tiff or .png" in seen[0].message and "cannot write" in seen[1].message
    assert dock.saved_label.text() == "not saved"
    assert sorted(p.name for p in out.iterdir()) == ["neon_labels.classes.json", "neon_labels.tif"]


def test_the_image_in_view_is_the_one_picked(annotator):
    viewer, dock = annotator
    other = viewer.add_image(np.zeros((50, 60), np.uint8), name="other")
    viewer.layers.selection.active = viewer.layers["neon_OSBS_029"]
    assert dock.segment.image_layer() is viewer.layers["neon_OSBS_029"]
    viewer.layers.selection.active = other
    assert dock.segment.image_layer() is other


def test_labels_appear_tile_row_by_tile_row_and_the_end_matches(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    seen = []

    def look(_):
        layers_now = [ly for ly in viewer.layers if ly.metadata.get("kind") == "class"]
        seen.append(sum(int(np.count_nonzero(ly.data)) for ly in layers_now))

    worker = dock.segment.run()
    worker.yielded.connect(look)
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    assert any(0 < n < 400 * 400 for n in seen[:-2]), "a part of the map is on screen before the end"
    run = dock.state.run_of(viewer.layers["tree"])
    assert one_class_per_pixel(run) and [ly.name for ly in viewer.layers] == ["neon_OSBS_029", *CLASSES]


def test_a_class_layer_is_shown_a_turn_after_it_is_added_and_a_hidden_one_stays_hidden(annotator, qtbot):
    """napari's insertion of a 6000² layer and its texture upload take ~90 ms each: they come in
    two turns (the layer is added hidden), and a layer the annotator hides stays hidden."""
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    at_insert, hidden_by_hand = {}, []

    def inserted(event):
        at_insert[event.value.name] = event.value.visible

    def hide_tree(_):
        tree = viewer.layers["tree"] if "tree" in viewer.layers else None
        if tree is not None and tree.visible and not hidden_by_hand:
            tree.visible = False
            hidden_by_hand.append(True)

    viewer.layers.events.inserted.connect(inserted)
    worker = dock.segment.run()
    worker.yielded.connect(hide_tree)
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    assert at_insert == dict.fromkeys(CLASSES, False)
    assert hidden_by_hand and not viewer.layers["tree"].visible
    assert viewer.layers["ground"].visible and viewer.layers["road"].visible


def test_cancel_after_labels_appeared_takes_them_back(annotator, qtbot):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    before = [np.array(ly.data) for ly in run.layers]
    dock.segment.parameters["tile_size"].value = 128
    dock.segment.set_classes(CLASSES)
    worker = dock.segment.run()
    steps = []

    def cancel_late(_):
        steps.append(1)
        if len(steps) == 10:
            dock.segment.cancel()

    worker.yielded.connect(cancel_late)
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    qtbot.wait(100)
    assert "cancelled" in dock.segment.status.text()
    assert all(np.array_equal(a, ly.data) for a, ly in zip(before, run.layers))
    assert all(ly.editable for ly in run.layers)


def test_cancel_leaves_the_viewer_as_it_was(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    before = [ly.name for ly in viewer.layers]
    worker = dock.segment.run()
    worker.yielded.connect(lambda _: dock.segment.cancel())
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    assert [ly.name for ly in viewer.layers] == before
    assert "cancelled" in dock.segment.status.text() and dock.segment.run_button.isEnabled()


def test_a_stroke_under_another_layer_counts_and_survives_refine(annotator, qtbot):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    tree, road = viewer.layers["tree"], viewer.layers["road"]
    ys, xs = np.nonzero(road.data)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    stroke(qtbot, tree, [(y, x)])
    assert tree.data[y, x] == layers.STROKE and road.data[y, x] == 0, "the stroke shows where it was painted"
    assert session.edited[y, x] and one_class_per_pixel(run)
    painted = session.edited.copy()
    before = session.labels.copy()
    dock.tabs.setCurrentIndex(1)
    dock.refine.reset_choices()
    dock.refine.refine()
    wait_refine(dock, qtbot)
    assert "refined from" in dock.refine.status.text()
    assert np.array_equal(session.labels[painted], before[painted]) and tree.data[y, x] == layers.STROKE
    assert one_class_per_pixel(run) and session.last_step == "refine"


def test_a_map_of_several_bands_is_never_read_back_half_shown(make_napari_viewer, qtbot, tiny_model_dir):
    """Item 4: a refinement is shown a band of rows per event-loop turn; until every band shows
    it the layers are read-only and a stroke sync takes nothing, so a band still showing the
    old map is never taken for strokes of its old class (the bands of old class along rows).
    A map changed this much is written straight into the arrays, and each layer is redrawn
    after its last write."""
    from maskdiffusion.napari import state

    viewer = make_napari_viewer()
    image = np.random.default_rng(0).integers(0, 256, (1536, 1536, 3), np.uint8)
    viewer.add_image(image, rgb=True, name="big")
    dock = make_dock(viewer, qtbot, tiny_model_dir, tile=512)
    dock.segment.parameters["overlap"].value = 64
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    stroke(qtbot, run.layers[0], [(y, 700) for y in range(0, 1536, 16)], size=40)
    strokes = int(session.edited.sum())
    seen = []
    write = run._write

    def write_and_try_a_sync(plane, region, only, refresh):
        seen.append((not any(ly.editable for ly in run.all_layers), run.sync_all(plane)))
        counts = write(plane, region, only, refresh)
        for k, n in enumerate(counts[:len(writes)]):
            if n:
                writes[k].append(next(clock))
        return counts

    run._write = write_and_try_a_sync
    clock = iter(range(10**9))
    before = [np.array(ly.data) for ly in run.layers]
    writes, refreshed = ([[] for _ in run.layers] for _ in range(2))
    for k, layer in enumerate(run.layers):
        def spied(*args, _original=layer.refresh, _k=k, **kwargs):
            refreshed[_k].append(next(clock))
            return _original(*args, **kwargs)

        layer.refresh = spied
    dock.tabs.setCurrentIndex(1)
    dock.refine.reset_choices()
    dock.refine.refine()
    wait_refine(dock, qtbot)
    assert len(seen) > len(run.layers), "the map is shown in several bands"
    assert all(locked and taken == 0 for locked, taken in seen)
    assert all(ly.editable for ly in run.layers) and one_class_per_pixel(run)
    assert int(session.edited.sum()) == strokes, "no pixel of a band not yet shown became a stroke"
    changed = session.history[-1].n_changed
    assert changed * state.DENSE_SHARE > session.labels.size, "a dense change, written straight into the arrays"
    assert all(refreshed[k] and refreshed[k][-1] > writes[k][-1] for k in range(len(run.layers))
               if np.any(before[k] != run.layers[k].data)), "every layer that changed is redrawn after its writes"


def test_the_refinement_cache_is_built_while_the_annotator_looks(annotator, qtbot):
    """Item 5: the first Refine waits for no cache: it is built on a worker once the run is shown."""
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    qtbot.waitUntil(lambda: session.prepared, timeout=TIMEOUT_MS)
    stroke(qtbot, viewer.layers["tree"], [(100, 100)])
    dock.tabs.setCurrentIndex(1)
    dock.refine.reset_choices()
    dock.refine.refine()
    wait_refine(dock, qtbot)
    assert "refined from" in dock.refine.status.text() and session.last_step == "refine"


def test_next_unsure_region_centres_the_view_on_it(annotator, qtbot):
    import warnings

    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    qtbot.waitUntil(lambda: session.prepared, timeout=TIMEOUT_MS)
    dock.refine.reset_choices()
    viewer.scene.camera.center = (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        pixel = dock.refine.next_unsure_region()
    assert pixel is not None
    world = run.layers[0].data_to_world(pixel)
    assert np.allclose(viewer.scene.camera.center[-2:], world[-2:])
    assert "unsure region around row" in dock.refine.status.text()


def test_refine_reads_the_layers_a_band_per_turn_and_misses_no_change(make_napari_viewer, qtbot, tiny_model_dir,
                                                                      monkeypatch):
    """Item 5: reading back every layer of a 6000² map froze the window 0.4 s on each Refine; it
    is read in bands over several event-loop turns (here one band per turn), the layers locked
    meanwhile, and a change made without a paint event (a script writing the data) in the last
    band is still taken."""
    from maskdiffusion.napari import state

    monkeypatch.setattr(state, "TURN_SECONDS", 0.0)
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).integers(0, 256, (1536, 1536, 3), np.uint8), rgb=True, name="big")
    dock = make_dock(viewer, qtbot, tiny_model_dir, tile=512)
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    box = (slice(1500, 1510), slice(20, 30))
    layer = next(ly for value, ly in enumerate(run.layers, start=1) if (session.labels[box] != value).all())
    layer.data[1500:1510, 20:30] = layers.STROKE
    dock.tabs.setCurrentIndex(1)
    dock.refine.reset_choices()
    dock.refine.refine()
    assert run.busy and not any(ly.editable for ly in run.layers), "layers locked while they are read"
    assert not session.edited[1500:1510, 20:30].any(), "the last band is read at a later turn"
    wait_refine(dock, qtbot)
    value = run.layers.index(layer) + 1
    assert session.edited[1500:1510, 20:30].all() and (session.labels[1500:1510, 20:30] == value).all()
    assert session.last_step == "refine" and one_class_per_pixel(run)


def test_ctrl_z_in_any_layer_in_any_order_keeps_one_class_per_pixel(annotator, qtbot):
    from qtpy.QtCore import Qt

    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    session = run.session(())
    draft = session.labels.copy()
    stroke(qtbot, viewer.layers["tree"], [(100, 100)])
    stroke(qtbot, viewer.layers["road"], [(300, 50)])
    dock.tabs.setCurrentIndex(1)
    dock.refine.reset_choices()
    dock.refine.refine()
    wait_refine(dock, qtbot)
    assert len(session.history) == 3
    for name in ("ground", "tree", "road"):
        viewer.layers.selection.active = viewer.layers[name]
        press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
        qtbot.waitUntil(lambda: not run.busy and run.pending_writes == 0, timeout=TIMEOUT_MS)
        assert one_class_per_pixel(run)
    assert np.array_equal(session.labels, draft) and not session.edited.any()
    press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    qtbot.waitUntil(lambda: not run.busy and run.pending_writes == 0, timeout=TIMEOUT_MS)
    assert session.edited.sum() > 0 and one_class_per_pixel(run)
    dock.refine.refine()
    wait_refine(dock, qtbot)
    assert int(session.edited.sum()) == int(np.count_nonzero(session.history[0].flipped)), \
        "undone steps are never read as strokes"


def test_refine_without_strokes_changes_nothing_and_says_why(annotator, qtbot):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    before = run.session(()).labels.copy()
    dock.refine.reset_choices()
    assert dock.refine.refine() is None
    assert "paint a few strokes" in dock.refine.status.text()
    assert np.array_equal(run.session(()).labels, before)


def test_run_again_replaces_the_map_as_one_undo_step_and_names_the_strokes(annotator, qtbot):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    tree = viewer.layers["tree"]
    stroke(qtbot, tree, [(10, 10)])
    with_stroke = run.session(()).labels.copy()
    assert run_and_wait(dock, qtbot) is run
    assert [ly.name for ly in viewer.layers].count("tree") == 1 and viewer.layers["tree"] is tree
    assert "your strokes in tree were replaced" in dock.segment.status.text()
    assert run.undo(())
    qtbot.waitUntil(lambda: not run.busy and run.pending_writes == 0, timeout=TIMEOUT_MS)
    assert np.array_equal(run.session(()).labels, with_stroke)
    assert one_class_per_pixel(run)


def test_removing_the_image_mid_run_adds_no_layers(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    worker = dock.segment.run()
    removed = []

    def remove_image(_):
        if not removed:
            removed.append(True)
            viewer.layers.remove("neon_OSBS_029")

    worker.yielded.connect(remove_image)
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == 0 and "removed" in dock.segment.status.text()
    assert not dock.segment.run_button.isEnabled() and "open an image" in dock.segment.run_button.toolTip()


def test_classes_typed_as_a_line_and_commas_in_a_cell(annotator):
    _, dock = annotator
    editor = dock.segment.classes_editor
    editor.line.setText("tree, grass, sand, road")
    editor.line.editingFinished.emit()
    assert [c.name for c in dock.segment.classes()] == ["tree", "grass", "sand", "road"]
    editor.table.item(0, 0).setText("oak, pine")
    assert [c.name for c in dock.segment.classes()] == ["oak", "pine", "grass", "sand", "road"]
    assert editor.line.text() == "oak, pine, grass, sand, road"
    editor.line.setText("a, a")
    editor.line.editingFinished.emit()
    assert "duplicate" in editor.error and not dock.segment.run_button.isEnabled()
    assert "duplicate" in dock.segment.run_button.toolTip()
    editor.line.setText("a,,b")
    editor.line.editingFinished.emit()
    assert "empty" in editor.error and not dock.segment.run_button.isEnabled(), "an empty name is not dropped"


def test_the_last_classes_come_back_and_bad_input_is_one_notification(annotator, qtbot, tiny_model_dir):
    from napari.utils.notifications import notification_manager

    from maskdiffusion.napari.settings import load_settings

    viewer, dock = annotator
    run_and_wait(dock, qtbot)
    assert load_settings().classes == "tree, ground, road" and load_settings().model_source == str(tiny_model_dir)
    dock.segment.set_classes([])
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    assert dock.segment.run() is None
    assert seen and "no classes" in seen[-1].message
    box = dock.segment.model_box
    box.source_combo.setCurrentText(str(tiny_model_dir / "missing"))
    assert not dock.segment.run_button.isEnabled()
    box.load()
    qtbot.waitUntil(lambda: not box.loading, timeout=TIMEOUT_MS)
    assert "could not load" in box.status.text() and "missing" in seen[-1].message
    notification_manager.notification_ready.disconnect(seen.append)


def test_a_trailing_slash_keeps_the_model_loaded(annotator, tiny_model_dir):
    _, dock = annotator
    dock.segment.model_box.source_combo.setCurrentText(str(tiny_model_dir) + "/")
    assert dock.segment.model_box.ready and dock.segment.run_button.isEnabled()


def test_progress_shows_tiles_and_time_left(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    texts = []
    worker = dock.segment.run()
    worker.yielded.connect(lambda _: texts.append((dock.segment.status.text(), dock.segment.progress_bar.value(),
                                                   dock.segment.progress_bar.maximum())))
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    tiles = [t for t in texts if t[0].startswith("tile ")]
    assert tiles and tiles[-1][2] == 16 and tiles[-1][1] == 16
    assert any("left" in t[0] for t in tiles[1:-1])


def test_a_tile_done_paints_the_progress_bar_with_the_next_frame_not_at_once(make_napari_viewer, qtbot,
                                                                            tiny_model_dir):
    """``QProgressBar.setValue`` repaints at once: in a window holding napari's OpenGL canvas
    that is a whole window frame per tile (20-100 ms under a software renderer), then the
    canvas's own frame. On screen, the bar's new value is painted with the next frame."""
    from qtpy.QtCore import QEvent, QObject

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "neon_osbs")
    dock = make_dock(viewer, qtbot, tiny_model_dir)
    dock.segment.parameters["tile_size"].value = 128
    bar = dock.segment.progress_bar
    paints = []

    class PaintCounter(QObject):
        def eventFilter(self, watched, event):  # noqa: N802 (Qt's name)
            if event.type() == QEvent.Type.Paint:
                paints.append(bar.value())
            return False

    counter = PaintCounter()
    bar.installEventFilter(counter)
    inside = []
    set_value = bar.setValue

    def watched_set_value(value):
        before = len(paints)
        set_value(value)
        inside.append(len(paints) - before)

    bar.setValue = watched_set_value
    dock.segment.run()
    qtbot.waitUntil(lambda: not dock.segment.running, timeout=TIMEOUT_MS)
    bar.removeEventFilter(counter)
    assert len(inside) >= 8
    assert not any(inside), "no paint inside a progress step"
    assert any(value > 0 for value in paints), "the bar shows the tiles done"


def test_band_stack_with_band_choice(make_napari_viewer, qtbot, tiny_model_dir):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "potsdam_like")
    dock = make_dock(viewer, qtbot, tiny_model_dir, ["building", "tree"])
    panel = dock.segment
    panel.image_picker.value = viewer.layers["potsdam-like RGBIR"]
    assert panel.band_pickers[0].native.isVisibleTo(panel) and panel.bands() == (0, 1, 2)
    panel.band_pickers[0].value = "IR"
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="unrelated")
    assert panel.bands() == (3, 1, 2)
    run = run_and_wait(dock, qtbot)
    building = run.layers[0]
    assert building.data.shape == (512, 512) and building.metadata["parameters"]["bands"] == [3, 1, 2]
    panel.image_picker.value = viewer.layers["potsdam-like RGBIR (RGB)"]
    assert not panel.band_pickers[0].native.isVisibleTo(panel) and panel.bands() is None


def test_all_planes_of_a_stack_unsupervised(make_napari_viewer, qtbot, tiny_model_dir):
    from maskdiffusion.napari.segment_panel import ALL_PLANES

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (2, 96, 128), dtype=np.uint8), name="stack", scale=(1, 0.5, 0.5))
    dock = make_dock(viewer, qtbot, tiny_model_dir, [], tile=64)
    panel = dock.segment
    assert panel.planes_picker.native.isVisibleTo(panel) and not panel.band_pickers[0].native.isVisibleTo(panel)
    panel.planes_picker.value = ALL_PLANES
    panel.parameters["unsupervised"].value = 3
    run = run_and_wait(dock, qtbot)
    assert [ly.name for ly in run.layers] == ["cluster 1", "cluster 2", "cluster 3"]
    total = sum((ly.data != 0).astype(int) for ly in run.layers)
    assert total.shape == (2, 96, 128) and (total == 1).all() and sorted(run.sessions) == [(0,), (1,)]
    assert tuple(run.layers[0].scale) == (1, 0.5, 0.5)


def test_session_saves_and_opens_to_continue_refining(annotator, qtbot, tmp_path, make_napari_viewer, tiny_model_dir):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    stroke(qtbot, viewer.layers["tree"], [(200, 200)])
    dock.refine.reset_choices()
    dock.refine.refine()
    wait_refine(dock, qtbot)
    folder = dock.refine.session_box.save(tmp_path / "tile")
    assert folder.name == "tile.mdsession" and (folder / "session.json").exists()
    saved = run.session(()).labels.copy()

    other = make_napari_viewer()
    from maskdiffusion.napari.dock import AnnotatorDock

    dock2 = AnnotatorDock(other)
    other.window.add_dock_widget(dock2)
    dock2.refine.session_box.open(folder)
    qtbot.waitUntil(lambda: bool(dock2.state.runs), timeout=TIMEOUT_MS)
    reopened = next(iter(dock2.state.runs.values()))
    assert np.array_equal(reopened.session(()).labels, saved) and reopened.session(()).edited.any()
    assert [ly.name for ly in reopened.layers] == CLASSES and "neon_OSBS_029" in other.layers
    dock2.refine.reset_choices()
    stroke(qtbot, reopened.layers[2], [(50, 50)])
    dock2.refine.refine()
    wait_refine(dock2, qtbot)
    assert reopened.session(()).last_step == "refine" and one_class_per_pixel(reopened)


def test_autosave_leaves_the_interface_free_and_loses_no_stroke(annotator, qtbot, tmp_path):
    """Autosave read every layer back and wrote the bundle on the interface's thread: 1-2 s
    frozen every two minutes at 6000². It returns at once, reads back in turns and writes on a
    worker; a stroke made meanwhile is in the next save."""
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    qtbot.waitUntil(lambda: run.session(()).prepared, timeout=TIMEOUT_MS)
    box = dock.refine.session_box
    bundle = tmp_path / "tile.mdsession"
    run.session_path = bundle
    dock.refine.reset_choices()
    stroke(qtbot, viewer.layers["tree"], [(40, 40)])
    assert box.autosave()
    assert not (bundle / "session.json").exists(), "nothing is written on the interface's thread"
    viewer.layers["road"].paint((150, 150), layers.STROKE)
    qtbot.waitUntil(lambda: box._writing is None and (bundle / "session.json").exists(), timeout=TIMEOUT_MS)
    saved = load_session(bundle)
    assert saved.labels[40, 40] == CLASSES.index("tree") + 1 and saved.edited[40, 40]
    qtbot.wait(30)
    assert box.dirty or saved.labels[150, 150] == CLASSES.index("road") + 1
    box.autosave()
    qtbot.waitUntil(lambda: box._writing is None and not box.dirty, timeout=TIMEOUT_MS)
    saved = load_session(bundle)
    assert saved.labels[150, 150] == CLASSES.index("road") + 1 and saved.edited[150, 150]
    assert np.array_equal(saved.labels, run.session(()).labels) and "saved to" in box.path_label.text()


def test_a_save_that_cannot_be_written_says_so_once_and_saving_at_quit_waits_for_nothing(annotator, qtbot,
                                                                                     tmp_path):
    from napari.utils.notifications import notification_manager

    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    qtbot.waitUntil(lambda: run.session(()).prepared, timeout=TIMEOUT_MS)
    dock.refine.reset_choices()
    box = dock.refine.session_box
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        assert box.save_soon(blocker / "tile")
        qtbot.waitUntil(lambda: bool(seen) and box._writing is None, timeout=TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert len(seen) == 1 and "cannot save the session" in seen[0].message, seen[0].message
    assert box.dirty and box.autosave_spin.value() == 0 and not list(tmp_path.glob("**/*.mdsession"))
    run.session_path = tmp_path / "at quit.mdsession"
    stroke(qtbot, viewer.layers["road"], [(60, 60)])
    box._save_before_quit()  # what QApplication.aboutToQuit calls: no later turn of the event loop comes
    saved = load_session(run.session_path)
    assert saved.labels[60, 60] == CLASSES.index("road") + 1 and not box.dirty


def test_class_by_example_remove_and_undo_keep_layers_in_step(annotator, qtbot):
    viewer, dock = annotator
    run = run_and_wait(dock, qtbot)
    dock.refine.reset_choices()
    dock.refine.add_example_class("shadow", (10, 10, 10))
    wait_refine(dock, qtbot)
    assert [ly.name for ly in run.layers] == [*CLASSES, "shadow"]
    stroke(qtbot, viewer.layers["shadow"], [(20, 20)])
    dock.refine.remove_class("ground")
    wait_refine(dock, qtbot)
    assert [ly.name for ly in run.layers] == ["tree", "road", "shadow"] and "ground" not in viewer.layers
    assert one_class_per_pixel(run)
    dock.refine._step(type(run).undo)
    qtbot.waitUntil(lambda: not run.busy and run.pending_writes == 0, timeout=TIMEOUT_MS)
    assert [ly.name for ly in run.layers] == [*CLASSES, "shadow"] and one_class_per_pixel(run)


def test_both_tabs_fit_a_1000_px_screen(annotator):
    viewer, dock = annotator
    for index in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(index)
        assert dock.tabs.widget(index).sizeHint().height() < 900, dock.tabs.tabText(index)


def test_the_dock_is_the_plugin_widget_and_commands_work(make_napari_viewer):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "MaskDiffusion annotator")
    assert widget.__class__.__name__ == "AnnotatorDock"
    layer = viewer.add_labels(np.array([[0, 1], [2, 2]], np.uint8), name="hand made")
    viewer.layers.selection.active = layer
    get_app_model().commands.execute_command(f"{PLUGIN}.split_semantic_layer").result()
    assert [ly.name for ly in viewer.layers][1:] == ["label 1", "label 2"]
    get_app_model().commands.execute_command(f"{PLUGIN}.merge_class_layers").result()
    assert np.array_equal(viewer.layers["semantic map"].data, layer.data)
    assert layers.class_layers(viewer)


def test_closing_the_dock_mid_run_drops_the_result(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    before = [ly.name for ly in viewer.layers]
    worker = dock.segment.run()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    qtbot.wait(50)
    assert [ly.name for ly in viewer.layers] == before


def test_the_rest_point_freezes_while_the_refine_tab_is_open_and_not_for_a_closed_panel(qtbot):
    """The annotator may open the Refine tab before the run's rest point: a panel in a hidden
    tab of a window on screen still freezes; a panel deleted meanwhile does nothing."""
    import gc

    from qtpy.QtWidgets import QTabWidget, QWidget

    from maskdiffusion.napari import garbage

    tabs, panel = QTabWidget(), QWidget()
    qtbot.addWidget(tabs)
    tabs.addTab(panel, "Segment")
    tabs.addTab(QWidget(), "Refine")
    tabs.show()
    tabs.setCurrentIndex(1)
    assert not panel.isVisible()
    try:
        assert garbage.settle(panel) and gc.get_freeze_count() > 0
    finally:
        garbage.release()
        gc.collect()
    panel.deleteLater()
    qtbot.waitUntil(lambda: tabs.count() == 1)
    assert not garbage.settle(panel)


def test_a_paused_burst_is_frozen_unless_released_objects_wait_for_their_collection():
    """What a paused burst makes joins the frozen objects without a walk; but where released
    objects (a removed layer) wait for a full collection, that collection runs at its end, so
    they are freed, not frozen."""
    import gc
    import weakref

    from maskdiffusion.napari import garbage

    class Node:
        pass

    def cycle():
        node = Node()
        node.me = node
        return node

    gc.collect()
    assert garbage.settle(), "a full collection ends any wait for released objects"
    try:
        frozen = gc.get_freeze_count()
        with garbage.paused():
            assert not gc.isenabled()
            made = [cycle() for _ in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= frozen + 1000, "the burst is out of the walk"
        del made
        garbage.release()
        dropped = cycle()
        gone = weakref.ref(dropped)
        del dropped
        with garbage.paused():
            pass
        assert gone() is None, "released objects were collected, not frozen"
    finally:
        garbage.release()
        gc.collect()


def test_no_garbage_collection_runs_while_a_model_loads(make_napari_viewer, qtbot, tiny_model_dir):
    """Loading a model makes ~0.5 M objects: the collections they tripped on the loading thread
    froze the window for 0.1-0.2 s each. On screen, none runs while the model loads, and what the
    load made is out of the collector's walk afterwards."""
    import gc
    import threading

    from maskdiffusion.model.loading import clear_model_cache

    clear_model_cache()
    viewer = make_napari_viewer(show=True)
    box = dock_with_model_chosen(viewer, tiny_model_dir).segment.model_box
    off_the_interface = []

    def on_collection(phase, info):
        if phase == "start" and threading.current_thread() is not threading.main_thread():
            off_the_interface.append(info["generation"])

    gc.callbacks.append(on_collection)
    try:
        box.load()
        frozen_at_start = gc.get_freeze_count()
        qtbot.waitUntil(lambda: not box.loading, timeout=TIMEOUT_MS)
    finally:
        gc.callbacks.remove(on_collection)
    assert box.ready and gc.isenabled()
    assert off_the_interface == [], f"collections of generations {off_the_interface} ran on the loading thread"
    assert gc.get_freeze_count() > frozen_at_start, "the loaded model is out of the walk"


FIRST_TORCH_OPEN = """
import json, sys, threading, time
from maskdiffusion.napari.runs import open_torch_libraries

assert "torch" not in sys.modules
span = {}
def work():
    start = time.perf_counter()
    span["opened"] = open_torch_libraries()
    span["start"], span["end"] = start, time.perf_counter()
worker = threading.Thread(target=work)
beats = []
worker.start()
while worker.is_alive():
    beats.append(time.perf_counter())
inside = [span["start"], *(b for b in beats if span["start"] <= b <= span["end"]), span["end"]]
torch_imported_early = "torch" in sys.modules
import torch
print(json.dumps({"opened": span["opened"], "seconds": span["end"] - span["start"],
                  "longest_lockout": max(b - a for a, b in zip(inside, inside[1:])),
                  "torch_imported_early": torch_imported_early, "torch_works": float(torch.ones(2).sum())}))
"""


def test_torchs_libraries_open_without_locking_the_interface_out():
    """``import torch`` opens libtorch_cpu holding the interpreter lock: 0.2-0.4 s in which the
    interface's thread runs no Python (a frozen window on a first model load). Opened first from
    the loading thread, the interface's thread keeps running; torch then imports and works."""
    import json
    import subprocess

    out = subprocess.run([sys.executable, "-c", FIRST_TORCH_OPEN], capture_output=True, text=True, timeout=300,
                         check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["opened"] and "libtorch_cpu" in " ".join(seen["opened"])
    assert not seen["torch_imported_early"] and seen["torch_works"] == 2.0
    assert seen["longest_lockout"] < seen["seconds"] / 2, seen


def test_long_lived_objects_leave_the_collectors_walk_and_dropped_ones_are_freed(make_napari_viewer, qtbot,
                                                                               tiny_model_dir):
    """A full garbage collection over napari, torch and the model froze the window for 0.3 s at
    6000²: on screen, a loaded model and a shown run are frozen out of the walk, and a layer
    removed afterwards, like the closed window, is still freed."""
    import gc
    import weakref

    viewer = make_napari_viewer(show=True)
    viewer.open_sample(PLUGIN, "neon_osbs")
    dock = make_dock(viewer, qtbot, tiny_model_dir)
    after_load = gc.get_freeze_count()
    assert after_load > 100_000, "what is alive once the model is loaded is out of the walk"
    run = run_and_wait(dock, qtbot)
    qtbot.waitUntil(lambda: gc.get_freeze_count() > after_load + 10_000, timeout=5000)  # the run's layers too
    gone = weakref.ref(run.layers[0])
    viewer.layers.remove(run.layers[0])
    gc.collect()
    assert gone() is None, "a removed class layer is freed"
    viewer.window._qt_window.hide()
    assert gc.get_freeze_count() == 0, "a window off screen keeps nothing frozen (its viewer stays collectable)"

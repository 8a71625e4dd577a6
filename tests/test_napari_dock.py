"""The MaskDiffusion dock on a real napari viewer (needs a display: run under ``xvfb-run``) and the
tiny model: runs, progress, cancel, strokes, undo from any layer, refinement, sessions, layout.

Workers run on the test's thread (``dock.state.synchronous``) except where the thread is the point.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from annotator_helpers import (
    CLASSES,
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
from maskdiffusion.napari import layers
from maskdiffusion.session_bundle import load_session

pytestmark = GUI


@pytest.fixture(autouse=True)
def _settings_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MASKDIFFUSION_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tiny_model_dir):
    """A viewer with the NEON sample and the dock, the tiny model loaded on CPU."""
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "neon_osbs")
    return viewer, make_dock(viewer, qtbot, tiny_model_dir)


def test_run_gives_one_layer_per_class(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    assert dock.segment.status.text().startswith("done: 3 classes, 3 new layers")
    dock.refine.confidence_check.setChecked(True)
    assert [ly.name for ly in viewer.layers] == ["neon_OSBS_029", *CLASSES, "unsure (refine)"]
    assert annotation is dock.state.annotation_of(viewer.layers["tree"]) and one_class_per_pixel(annotation)
    for spec, layer in zip(dock.segment.classes(), annotation.ordered_layers()):
        assert layer.data.shape == (400, 400) and set(np.unique(layer.data)) == {0, layers.DRAFT}
        assert layer.selected_label == layers.STROKE and layer.editable
        for value in (layers.DRAFT, layers.STROKE):
            assert np.allclose(layer.colormap.map(np.array([value]))[0][:3] * 255, spec.color, atol=1)
        assert layer.metadata["georeference"]["crs"].startswith("EPSG:326")
        assert layer.metadata["annotation"] == annotation.id and annotation.value_of(layer.metadata["class_id"])


def test_save_labels_writes_the_georeferenced_map_and_its_classes(annotator, qtbot, tmp_path):
    import json

    from maskdiffusion.geo.raster_io import read_image

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    stroke(qtbot, dock, viewer.layers["road"], [(30, 30)])
    written = dock.save_labels(tmp_path / "neon_labels.tif")
    labels, geo = read_image(written[0])
    assert np.array_equal(labels, annotation.session().labels) and geo.crs.startswith("EPSG:326")
    sidecar = json.loads((tmp_path / "neon_labels.classes.json").read_text())
    assert sidecar["label_values"] == {"0": "unlabelled", "1": "tree", "2": "ground", "3": "road"}
    assert sidecar["image_layer"] == "neon_OSBS_029"
    png = dock.save_labels(tmp_path / "neon_labels.png")
    assert np.array_equal(read_image(png[0])[0], labels)


def test_save_labels_from_the_dialog_writes_on_a_worker_and_reports_a_bad_path_once(annotator, qtbot, tmp_path):
    """Unpacking the map and encoding the file took 0.5-0.7 s on the interface's thread at
    6000²: *Save labels…* returns at once and the file follows from a worker."""
    from napari.utils.notifications import notification_manager

    from maskdiffusion.geo.raster_io import read_image

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    dock.state.synchronous = False
    out = tmp_path / "out"
    out.mkdir()
    target = out / "neon_labels.tif"
    assert dock.save_labels_soon(target) is not None
    assert not target.exists() and dock.saved_label.text() == "saving …"
    qtbot.waitUntil(lambda: dock.saved_label.text().startswith("saved"), timeout=TIMEOUT_MS)
    assert np.array_equal(read_image(str(target))[0], annotation.session().labels)
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
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    seen = []

    def look(_):
        layers_now = [ly for ly in viewer.layers if ly.metadata.get("kind") == "class"]
        seen.append(sum(int(np.count_nonzero(ly.data)) for ly in layers_now))

    worker = dock.segment.run()
    worker.yielded.connect(look)
    wait_idle(dock, qtbot)
    assert any(0 < n < 400 * 400 for n in seen[:-2]), "a part of the map is on screen before the end"
    annotation = dock.state.annotation_of(viewer.layers["tree"])
    assert one_class_per_pixel(annotation) and [ly.name for ly in viewer.layers] == ["neon_OSBS_029", *CLASSES]


def test_cancel_after_labels_appeared_takes_them_back(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    before = [np.array(ly.data) for ly in annotation.ordered_layers()]
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    dock.segment.set_classes([*CLASSES, "water"])
    worker = dock.segment.run()
    steps = []

    def cancel_late(_):
        steps.append(1)
        if len(steps) == 10:
            dock.segment.cancel_button.click()

    worker.yielded.connect(cancel_late)
    qtbot.waitUntil(lambda: not dock.segment.running and "water" not in viewer.layers, timeout=TIMEOUT_MS)
    wait_idle(dock, qtbot)
    assert "cancelled" in dock.segment.status.text()
    assert [ly.name for ly in viewer.layers] == ["neon_OSBS_029", *CLASSES]
    assert all(np.array_equal(a, ly.data) for a, ly in zip(before, annotation.ordered_layers()))
    assert all(ly.editable for ly in annotation.ordered_layers())


def test_cancel_leaves_the_viewer_as_it_was(annotator, qtbot):
    viewer, dock = annotator
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    before = [ly.name for ly in viewer.layers]
    worker = dock.segment.run()
    worker.yielded.connect(lambda _: dock.segment.cancel())
    qtbot.waitUntil(lambda: not dock.segment.running and [ly.name for ly in viewer.layers] == before,
                    timeout=TIMEOUT_MS)
    assert "cancelled" in dock.segment.status.text() and dock.segment.run_button.isEnabled()
    assert not dock.state.annotations


def test_a_stroke_under_another_layer_counts_and_survives_refine(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    session = annotation.session()
    tree, road = viewer.layers["tree"], viewer.layers["road"]
    ys, xs = np.nonzero(road.data)
    y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
    stroke(qtbot, dock, tree, [(y, x)])
    assert tree.data[y, x] == layers.STROKE and road.data[y, x] == 0, "the stroke shows where it was painted"
    assert session.edited[y, x] and one_class_per_pixel(annotation)
    painted = np.asarray(session.edited)
    before = session.labels.copy()
    dock.refine.refine_button.click()
    wait_idle(dock, qtbot)
    assert "refined from" in dock.refine.status.text()
    assert np.array_equal(session.labels[painted], before[painted]) and tree.data[y, x] == layers.STROKE
    assert one_class_per_pixel(annotation) and session.last_step == "refine"


def test_a_map_of_several_bands_is_never_read_back_half_shown(make_napari_viewer, qtbot, tiny_model_dir):
    """A refinement is shown a band of rows per event-loop turn; until every band shows it the
    layers are read-only and a stroke sync takes nothing, so a band still showing the old map is
    never taken for strokes of its old class."""
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).integers(0, 256, (1536, 1536, 3), np.uint8), rgb=True, name="big")
    dock = make_dock(viewer, qtbot, tiny_model_dir, tile=512)
    annotation = run_and_wait(dock, qtbot)
    session = annotation.session()
    stroke(qtbot, dock, annotation.ordered_layers()[0], [(y, 700) for y in range(0, 1536, 16)], size=40)
    strokes = session.edited.sum()
    seen = []
    write = annotation.write

    def write_and_try_a_stroke(plane, region=None, **kwargs):
        seen.append((not any(ly.editable for ly in annotation.ordered_layers()),
                     annotation.take_strokes(annotation.ordered_layers()[1], plane)))
        return write(plane, region, **kwargs)

    annotation.write = write_and_try_a_stroke
    dock.refine.refine()
    wait_idle(dock, qtbot)
    assert len(seen) > 3, "the map is shown in several bands"
    assert all(locked and taken == 0 for locked, taken in seen)
    assert all(ly.editable for ly in annotation.ordered_layers()) and one_class_per_pixel(annotation)
    assert session.edited.sum() == strokes, "no pixel of a band not yet shown became a stroke"


def test_the_refinement_cache_is_built_while_the_annotator_looks(annotator, qtbot):
    """The first Refine waits for no cache: it is built on a worker once the run is shown."""
    viewer, dock = annotator
    dock.state.synchronous = False
    annotation = run_and_wait(dock, qtbot)
    session = annotation.session()
    qtbot.waitUntil(lambda: session.prepared, timeout=TIMEOUT_MS)
    stroke(qtbot, dock, viewer.layers["tree"], [(100, 100)])
    dock.refine.refine()
    wait_idle(dock, qtbot)
    assert "refined from" in dock.refine.status.text() and session.last_step == "refine"


def test_next_unsure_region_centres_the_view_on_it(annotator, qtbot):
    import warnings

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    viewer.scene.camera.center = (0, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        pixel = dock.refine.next_unsure_region()
    assert pixel is not None
    world = annotation.ordered_layers()[0].data_to_world(pixel)
    assert np.allclose(viewer.scene.camera.center[-2:], world[-2:])
    assert "unsure region around row" in dock.refine.status.text()


def test_refine_reads_the_layers_a_band_per_turn_and_misses_no_change(make_napari_viewer, qtbot, tiny_model_dir,
                                                                      monkeypatch):
    """Reading back every layer of a 6000² map froze the window 0.4 s on each Refine; it is read
    in bands over several event-loop turns (here one band per turn), the layers locked
    meanwhile, and a change made without a paint event (a script writing the data) in the last
    band is still taken."""
    from maskdiffusion.napari import turns

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).integers(0, 256, (1536, 1536, 3), np.uint8), rgb=True, name="big")
    dock = make_dock(viewer, qtbot, tiny_model_dir, tile=512)
    annotation = run_and_wait(dock, qtbot)
    monkeypatch.setattr(turns, "TURN_SECONDS", 0.0)
    session = annotation.session()
    box = (slice(1500, 1510), slice(20, 30))
    value, layer = next((v, ly) for v, ly in enumerate(annotation.ordered_layers(), start=1)
                        if (session.labels[box] != v).all())
    layer.data[1500:1510, 20:30] = layers.STROKE
    dock.refine.refine()
    assert annotation.busy and not any(ly.editable for ly in annotation.ordered_layers()), "locked while read"
    assert not session.edited[1500:1510, 20:30].any(), "the last band is read at a later turn"
    wait_idle(dock, qtbot)
    assert session.edited[1500:1510, 20:30].all() and (session.labels[1500:1510, 20:30] == value).all()
    assert session.last_step == "refine" and one_class_per_pixel(annotation)


def test_ctrl_z_in_any_layer_in_any_order_keeps_one_class_per_pixel(annotator, qtbot):
    from qtpy.QtCore import Qt

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    session = annotation.session()
    draft = session.labels.copy()
    stroke(qtbot, dock, viewer.layers["tree"], [(100, 100)])
    stroke(qtbot, dock, viewer.layers["road"], [(300, 50)])
    dock.refine.refine()
    wait_idle(dock, qtbot)
    assert len(session.history) == 3
    for name in ("ground", "tree", "road"):
        viewer.layers.selection.active = viewer.layers[name]
        press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
        wait_idle(dock, qtbot)
        assert one_class_per_pixel(annotation)
    assert np.array_equal(session.labels, draft) and not session.edited.any()
    press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier | Qt.ShiftModifier)
    wait_idle(dock, qtbot)
    assert session.edited.sum() > 0 and one_class_per_pixel(annotation)
    dock.refine.refine()
    wait_idle(dock, qtbot)
    assert session.edited.sum() == np.count_nonzero(session.history[0].flipped), "undone steps are never strokes"


def test_ctrl_z_with_nothing_to_undo_says_so(annotator, qtbot):
    from napari.utils.notifications import notification_manager
    from qtpy.QtCore import Qt

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    annotation.session().history.clear()
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    try:
        viewer.layers.selection.active = viewer.layers["tree"]
        press(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
        qtbot.waitUntil(lambda: bool(seen), timeout=5000)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert "nothing to undo" in seen[-1].message


def test_refine_without_strokes_changes_nothing_and_says_why(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    before = annotation.session().labels.copy()
    dock.refine.refine()
    wait_idle(dock, qtbot)
    assert "paint a few strokes" in dock.refine.status.text()
    assert np.array_equal(annotation.session().labels, before)


def test_run_again_replaces_the_map_as_one_undo_step_and_names_the_strokes(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    tree = viewer.layers["tree"]
    stroke(qtbot, dock, tree, [(10, 10)])
    with_stroke = annotation.session().labels.copy()
    assert run_and_wait(dock, qtbot) is annotation
    assert [ly.name for ly in viewer.layers].count("tree") == 1 and viewer.layers["tree"] is tree
    assert "your strokes in tree were replaced" in dock.segment.status.text()
    assert annotation.undo(())
    wait_idle(dock, qtbot)
    assert np.array_equal(annotation.session().labels, with_stroke) and one_class_per_pixel(annotation)


def test_run_again_with_other_classes_updates_the_same_annotation(annotator, qtbot):
    """Classes kept keep their layers; a new class gets one, a dropped one loses it; one undo step."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    tree = viewer.layers["tree"]
    dock.segment.set_classes(["tree", "water"])
    assert run_and_wait(dock, qtbot) is annotation
    assert class_names(annotation) == ["tree", "water"] and viewer.layers["tree"] is tree
    qtbot.waitUntil(lambda: [ly.name for ly in viewer.layers] == ["neon_OSBS_029", "tree", "water"], timeout=5000)
    annotation.undo(())
    wait_idle(dock, qtbot)
    assert class_names(annotation) == CLASSES and one_class_per_pixel(annotation)
    qtbot.waitUntil(lambda: sorted(ly.name for ly in viewer.layers if ly.name != "neon_OSBS_029") == sorted(CLASSES),
                    timeout=5000)


def test_removing_the_image_mid_run_adds_no_layers(annotator, qtbot):
    viewer, dock = annotator
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    worker = dock.segment.run()
    removed = []

    def remove_image(_):
        if not removed:
            removed.append(True)
            viewer.layers.remove("neon_OSBS_029")

    worker.yielded.connect(remove_image)
    qtbot.waitUntil(lambda: not dock.segment.running and len(viewer.layers) == 0, timeout=TIMEOUT_MS)
    assert "removed" in dock.segment.status.text()
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
    try:
        assert dock.segment.run() is None
        assert seen and "no classes" in seen[-1].message
        box = dock.segment.model_box
        box.source_combo.setCurrentText(str(tiny_model_dir / "missing"))
        assert not dock.segment.run_button.isEnabled()
        box.load()
        qtbot.waitUntil(lambda: not box.loading, timeout=TIMEOUT_MS)
    finally:
        notification_manager.notification_ready.disconnect(seen.append)
    assert "could not load" in box.status.text() and "missing" in seen[-1].message


def test_a_trailing_slash_keeps_the_model_loaded(annotator, tiny_model_dir):
    _, dock = annotator
    dock.segment.model_box.source_combo.setCurrentText(str(tiny_model_dir) + "/")
    assert dock.segment.model_box.ready and dock.segment.run_button.isEnabled()


def test_progress_shows_tiles_and_time_left(annotator, qtbot):
    viewer, dock = annotator
    dock.segment.parameters["tile_size"].value = 128
    texts = []
    panel = dock.segment
    original = panel._on_progress

    def watched(item):
        original(item)
        texts.append((panel.status.text(), panel.progress_bar.value(), panel.progress_bar.maximum()))

    panel._on_progress = watched
    run_and_wait(dock, qtbot)
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
    dock = make_dock(viewer, qtbot, tiny_model_dir, synchronous=False)
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
    run_and_wait(dock, qtbot)
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
    annotation = run_and_wait(dock, qtbot)
    building = annotation.ordered_layers()[0]
    assert building.data.shape == (512, 512) and building.metadata["parameters"]["bands"] == [3, 1, 2]
    panel.image_picker.value = viewer.layers["potsdam-like RGBIR (RGB)"]
    assert not panel.band_pickers[0].native.isVisibleTo(panel) and panel.bands() is None


def test_all_planes_of_a_stack_unsupervised_and_a_class_change_undone_on_every_plane(make_napari_viewer, qtbot,
                                                                                     tiny_model_dir):
    from maskdiffusion.napari.segment_panel import ALL_PLANES

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (2, 96, 128), dtype=np.uint8), name="stack", scale=(1, 0.5, 0.5))
    dock = make_dock(viewer, qtbot, tiny_model_dir, [], tile=64)
    panel = dock.segment
    assert panel.planes_picker.native.isVisibleTo(panel) and not panel.band_pickers[0].native.isVisibleTo(panel)
    panel.planes_picker.value = ALL_PLANES
    panel.parameters["unsupervised"].value = 3
    annotation = run_and_wait(dock, qtbot)
    names = ["cluster 1", "cluster 2", "cluster 3"]
    assert class_names(annotation) == names
    total = sum((ly.data != 0).astype(int) for ly in annotation.ordered_layers())
    assert total.shape == (2, 96, 128) and (total == 1).all() and sorted(annotation.sessions) == [(0,), (1,)]
    assert tuple(annotation.ordered_layers()[0].scale) == (1, 0.5, 0.5)
    viewer.layers.remove("cluster 2")
    wait_idle(dock, qtbot)
    assert all(s.classes and len(s.classes) == 2 for s in annotation.sessions.values())
    assert not any((s.labels == 3).any() for s in annotation.sessions.values())
    viewer.dims.set_current_step(0, 1)
    annotation.undo(annotation.current_plane())
    wait_idle(dock, qtbot)
    assert class_names(annotation) == names and all(len(s.classes) == 3 for s in annotation.sessions.values())
    assert all(one_class_per_pixel(annotation, plane) for plane in annotation.sessions)


def test_session_saves_and_opens_to_continue_refining(annotator, qtbot, tmp_path, make_napari_viewer, tiny_model_dir):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    stroke(qtbot, dock, viewer.layers["tree"], [(200, 200)])
    dock.refine.refine()
    wait_idle(dock, qtbot)
    folder = dock.refine.session_box.save(tmp_path / "tile")
    assert folder.name == "tile.mdsession" and (folder / "session.json").exists()
    saved = annotation.session().labels.copy()

    other = make_napari_viewer()
    dock2 = make_dock(other, qtbot, tiny_model_dir)
    dock2.refine.session_box.open(folder)
    qtbot.waitUntil(lambda: bool(dock2.state.annotations), timeout=TIMEOUT_MS)
    wait_idle(dock2, qtbot)
    reopened = next(iter(dock2.state.annotations.values()))
    assert np.array_equal(reopened.session().labels, saved) and reopened.session().edited.any()
    assert class_names(reopened) == CLASSES and "neon_OSBS_029" in other.layers
    assert other.layers["tree"].data[200, 200] == layers.STROKE, "the strokes open as strokes"
    stroke(qtbot, dock2, other.layers["road"], [(50, 50)])
    dock2.refine.refine()
    wait_idle(dock2, qtbot)
    assert reopened.session().last_step == "refine" and one_class_per_pixel(reopened)


def test_autosave_leaves_the_interface_free_and_loses_no_stroke(annotator, qtbot, tmp_path):
    """Autosave read every layer back and wrote the bundle on the interface's thread: 1-2 s
    frozen every two minutes at 6000². It returns at once, reads back in turns and writes on a
    worker; a stroke made meanwhile is in the next save."""
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    dock.state.synchronous = False
    box = dock.refine.session_box
    bundle = tmp_path / "tile.mdsession"
    annotation.session_path = bundle
    stroke(qtbot, dock, viewer.layers["tree"], [(40, 40)])
    assert box.autosave()
    assert not (bundle / "session.json").exists(), "nothing is written on the interface's thread"
    viewer.layers["road"].paint((150, 150), layers.STROKE)
    qtbot.waitUntil(lambda: box._writing is None and (bundle / "session.json").exists(), timeout=TIMEOUT_MS)
    saved = load_session(bundle)
    assert saved.labels[40, 40] == CLASSES.index("tree") + 1 and saved.edited[40, 40]
    wait_idle(dock, qtbot)
    box.autosave()
    qtbot.waitUntil(lambda: box._writing is None and not box.dirty, timeout=TIMEOUT_MS)
    saved = load_session(bundle)
    assert saved.labels[150, 150] == CLASSES.index("road") + 1 and saved.edited[150, 150]
    assert np.array_equal(saved.labels, annotation.session().labels) and "saved to" in box.path_label.text()


def test_a_save_that_cannot_be_written_says_so_once_and_saving_at_quit_waits_for_nothing(annotator, qtbot,
                                                                                     tmp_path):
    from napari.utils.notifications import notification_manager

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
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
    annotation.session_path = tmp_path / "at quit.mdsession"
    stroke(qtbot, dock, viewer.layers["road"], [(60, 60)])
    box._save_before_quit()  # what QApplication.aboutToQuit calls: no later turn of the event loop comes
    saved = load_session(annotation.session_path)
    assert saved.labels[60, 60] == CLASSES.index("road") + 1 and not box.dirty


def test_class_by_example_remove_and_undo_keep_layers_in_step(annotator, qtbot):
    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    dock.refine.add_example_class("shadow", (10, 10, 10))
    wait_idle(dock, qtbot)
    assert [ly.name for ly in annotation.ordered_layers()] == [*CLASSES, "shadow"]
    stroke(qtbot, dock, viewer.layers["shadow"], [(20, 20)])
    dock.refine.remove_class("ground")
    wait_idle(dock, qtbot)
    assert [ly.name for ly in annotation.ordered_layers()] == ["tree", "road", "shadow"]
    assert "ground" not in viewer.layers and one_class_per_pixel(annotation)
    dock.refine.undo_button.click()
    wait_idle(dock, qtbot)
    assert [ly.name for ly in annotation.ordered_layers()] == [*CLASSES, "shadow"] and one_class_per_pixel(annotation)


def test_both_tabs_fit_a_1000_px_screen(annotator):
    viewer, dock = annotator
    for index in range(dock.tabs.count()):
        dock.tabs.setCurrentIndex(index)
        assert dock.tabs.widget(index).sizeHint().height() < 900, dock.tabs.tabText(index)


def test_the_dock_is_the_plugin_widget_and_commands_work(make_napari_viewer, qtbot):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "MaskDiffusion annotator")
    assert widget.__class__.__name__ == "AnnotatorDock"
    layer = viewer.add_labels(np.array([[0, 1], [2, 2]], np.uint8), name="hand made")
    viewer.layers.selection.active = layer
    get_app_model().commands.execute_command(f"{PLUGIN}.split_semantic_layer").result()
    assert [ly.name for ly in viewer.layers][1:] == ["label 1", "label 2"]
    qtbot.waitUntil(lambda: bool(widget.state.annotations), timeout=5000)
    split = widget.state.annotation_of(viewer.layers["label 1"])
    assert split is not None and class_names(split) == ["label 1", "label 2"], "split layers are one annotation"
    get_app_model().commands.execute_command(f"{PLUGIN}.merge_class_layers").result()
    assert np.array_equal(viewer.layers["semantic map"].data, layer.data)


def test_closing_the_dock_mid_run_drops_the_result(annotator, qtbot):
    viewer, dock = annotator
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    before = [ly.name for ly in viewer.layers]
    worker = dock.segment.run()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.waitUntil(lambda: bool(finished) and [ly.name for ly in viewer.layers] == before, timeout=TIMEOUT_MS)


def test_a_model_load_keeps_collections_off_its_thread_and_freezes_what_it_made(tiny_model_dir):
    """Loading makes ~0.5 M objects; collections tripped meanwhile held the interpreter 0.1-0.2 s
    each on the loading thread. None runs during the load, and what it made leaves the walk."""
    import gc

    from maskdiffusion.model.loading import clear_model_cache
    from maskdiffusion.napari.workers import load

    clear_model_cache()
    seen = []
    gc.callbacks.append(lambda phase, info: seen.append(phase))
    frozen = gc.get_freeze_count()
    try:
        load(str(tiny_model_dir), "cpu", "fp32")
    finally:
        gc.callbacks.pop()
    assert "start" not in seen and gc.isenabled() and gc.get_freeze_count() > frozen
    gc.unfreeze()


def test_a_tile_size_can_be_typed_and_a_value_out_of_range_says_so(annotator, qtbot):
    """Issue 27 item 18: every keystroke was clamped to the minimum 64, so typing 128 gave 4096."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    viewer, dock = annotator
    dock.segment.params_toggle.setChecked(True)
    spin = dock.segment.parameters["tile_size"]
    for text, value in (("128", 128), ("768", 768), ("1024", 1024)):
        spin.native.lineEdit().selectAll()
        QTest.keyClicks(spin.native, text)
        QTest.keyClick(spin.native, Qt.Key_Tab)
        assert spin.value == value and dock.segment.run_button.isEnabled()
    spin.native.lineEdit().selectAll()
    QTest.keyClicks(spin.native, "5000")
    QTest.keyClick(spin.native, Qt.Key_Tab)
    assert spin.value == 5000 and not dock.segment.run_button.isEnabled()
    assert "between 64 and 4096" in dock.segment.params_error.text() and dock.segment.params_error.isVisibleTo(dock)
    spin.value = 100
    assert "multiple of 64" in dock.segment.params_error.text() and not dock.segment.run_button.isEnabled()


def test_the_class_editor_shows_what_is_wrong_and_gives_new_classes_their_own_colours(annotator):
    """Issue 27 item 19: classes split from a comma list in a cell took other classes' colours;
    an invalid line's reason was only in a tooltip; an empty list left Run enabled."""
    _, dock = annotator
    editor = dock.segment.classes_editor
    editor.line.setText("tree, grass, sand, road")
    editor.line.editingFinished.emit()
    editor.table.item(0, 0).setText("oak, pine")
    colours = [c.color for c in dock.segment.classes()]
    assert len(set(colours)) == len(colours) == 5
    editor.line.setText("a, a")
    editor.line.editingFinished.emit()
    assert "duplicate" in editor.error_label.text() and editor.error_label.isVisibleTo(editor)
    editor.line.setText("road")
    editor.line.editingFinished.emit()
    assert not editor.error_label.isVisibleTo(editor) and dock.segment.run_button.isEnabled()
    editor.set_classes([])
    assert not dock.segment.run_button.isEnabled() and "no classes" in dock.segment.run_button.toolTip()


def test_save_selected_layers_offers_our_writer_and_the_dock_points_to_it(annotator, qtbot):
    """Issue 27 item 20: napari preselects its own writer for labels (npe2 sorts writers of the
    same specificity by registration, so ours cannot come first): the dock says which to pick."""
    from napari.plugins import _npe2

    viewer, dock = annotator
    annotation = run_and_wait(dock, qtbot)
    filters, _ = _npe2.file_extensions_string_for_layers(annotation.ordered_layers())
    assert "MaskDiffusion GeoTIFF labels" in filters
    save = next(b for b in dock.findChildren(type(dock.segment.run_button)) if b.text() == "Save labels…")
    assert "MaskDiffusion GeoTIFF labels" in save.toolTip()


def test_class_layers_come_together_with_the_first_rows_on_a_small_image(annotator, qtbot):
    """Issue 27 item 21: on a 400² image the empty class layers came one per turn (about 1.5 s
    each) and the rows only after all of them: they now come together with the first rows."""
    viewer, dock = annotator
    dock.state.synchronous = False
    dock.segment.parameters["tile_size"].value = 128
    seen = []

    def look(step):
        if getattr(step, "region", None) is not None and not seen:
            shown = [ly for ly in viewer.layers if ly.metadata.get("kind") == "class"]
            seen.append((len(shown), sum(int(np.count_nonzero(ly.data)) for ly in shown)))

    worker = dock.segment.run()
    worker.yielded.connect(look)
    wait_idle(dock, qtbot)
    assert seen and seen[0][0] == len(CLASSES) and seen[0][1] > 0, seen


def test_the_picker_follows_the_image_in_view_and_status_lines_follow_the_image(annotator, qtbot, tmp_path):
    """Issue 27 item 22: the picker showed the first image, not the one opened; "saved photo02"
    stayed while photo09 was in front."""
    viewer, dock = annotator
    run_and_wait(dock, qtbot)
    dock.save_labels(tmp_path / "neon.tif")
    assert "saved neon.tif" in dock.saved_label.text() and dock.segment.status.text().startswith("done")
    other = viewer.add_image(np.zeros((64, 64), np.uint8), name="photo09")
    qtbot.waitUntil(lambda: dock.segment.image_layer() is other, timeout=5000)
    assert dock.segment.status.text() == "" and "neon.tif" not in dock.saved_label.text()

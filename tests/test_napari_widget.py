"""The dock widget on a real napari viewer (needs a display: run under ``xvfb-run``) and the tiny model."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from maskdiffusion.napari import layers as L  # noqa: E402

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


@pytest.fixture
def annotator(make_napari_viewer, qtbot, tiny_model_dir):
    """A viewer with the NEON sample and the widget docked, the tiny model loaded on CPU."""
    from maskdiffusion.napari.widget import MaskDiffusionWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "neon_osbs")
    widget = MaskDiffusionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MaskDiffusion")
    widget.source_combo.setCurrentText(str(tiny_model_dir))
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("float32")
    assert not widget.run_button.isEnabled()
    widget.load_model()
    assert not widget.run_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.loading, timeout=TIMEOUT_MS)
    assert widget.model_ready and widget.run_button.isEnabled()
    widget.set_classes(CLASSES)
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(0)
    return viewer, widget


def run_and_wait(widget, qtbot):
    """Run and wait for the worker's end (the widget's own handlers are connected before it starts)."""
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    return worker


def test_run_gives_one_layer_per_class(annotator, qtbot):
    viewer, widget = annotator
    image = viewer.layers["neon_OSBS_029"]
    widget.semantic_check.setChecked(True)
    widget.confidence_check.setChecked(True)
    widget.run()
    assert not widget.run_button.isEnabled() and widget.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert widget.status.text().startswith("done: 3 classes, 5 new layers")
    names = [ly.name for ly in viewer.layers]
    assert names == ["neon_OSBS_029", "confidence", "semantic map", *CLASSES]
    labels = [viewer.layers[n] for n in CLASSES]
    total = sum(ly.data.astype(int) for ly in labels)
    assert (total == 1).all()
    specs = widget.classes()
    for spec, layer in zip(specs, labels):
        assert layer.data.shape == (400, 400) and set(np.unique(layer.data)) <= {0, 1}
        assert np.allclose(layer.colormap.map(np.array([1]))[0][:3] * 255, spec.color, atol=1)
        md = layer.metadata
        assert md["class"] == spec.name and md["prompt"] == spec.name and md["model"]
        assert md["parameters"]["tile_size"] == 256 and md["georeference"] == image.metadata["georeference"]
        assert tuple(layer.scale) == tuple(image.scale) and tuple(layer.translate) == tuple(image.translate)
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_cancel_leaves_the_viewer_as_it_was(annotator, qtbot):
    viewer, widget = annotator
    widget.tile_spin.setValue(128)
    widget.overlap_spin.setValue(0)
    before = [ly.name for ly in viewer.layers]
    worker = widget.run()
    worker.yielded.connect(lambda _: widget.cancel())
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT_MS)
    assert [ly.name for ly in viewer.layers] == before
    assert "cancelled" in widget.status.text() and widget.run_button.isEnabled()


def test_paint_undo_and_run_again_keeps_edits_undoable(annotator, qtbot):
    viewer, widget = annotator
    run_and_wait(widget, qtbot)
    tree = viewer.layers["tree"]
    first = tree.data.copy()
    tree.paint((200, 200), 0)
    tree.paint((10, 10), 1)
    painted = tree.data.copy()
    assert not np.array_equal(painted, first)
    tree.undo()
    tree.undo()
    assert np.array_equal(tree.data, first)
    tree.redo()
    tree.redo()
    assert np.array_equal(tree.data, painted)

    run_and_wait(widget, qtbot)
    assert [ly.name for ly in viewer.layers].count("tree") == 1 and viewer.layers["tree"] is tree
    assert np.array_equal(tree.data, first)
    tree.undo()
    assert np.array_equal(tree.data, painted)


def test_band_stack_with_band_choice(make_napari_viewer, qtbot, tiny_model_dir):
    from maskdiffusion.napari.widget import MaskDiffusionWidget

    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "potsdam_like")
    widget = MaskDiffusionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image_combo.setCurrentText("potsdam-like RGBIR")
    assert widget.band_combos[0].count() == 4 and widget.bands() == (0, 1, 2)
    widget.band_combos[0].setCurrentText("IR")
    viewer.add_labels(np.zeros((4, 4), np.uint8), name="unrelated")
    assert widget.bands() == (3, 1, 2)
    widget.source_combo.setCurrentText(str(tiny_model_dir))
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("float32")
    widget.load_model()
    qtbot.waitUntil(lambda: not widget.loading, timeout=TIMEOUT_MS)
    widget.set_classes(["building", "tree"])
    widget.tile_spin.setValue(256)
    widget.overlap_spin.setValue(0)
    run_and_wait(widget, qtbot)
    building = viewer.layers["building"]
    assert building.data.shape == (512, 512)
    assert building.metadata["parameters"]["bands"] == [3, 1, 2]
    assert building.metadata["image"] == "potsdam-like RGBIR"


def test_merge_split_and_export_read_back(annotator, qtbot, tmp_path):
    viewer, widget = annotator
    run_and_wait(widget, qtbot)
    class_layers = [viewer.layers[n] for n in CLASSES]
    widget.merge_layers()
    semantic = viewer.layers["semantic map"]
    assert semantic.metadata["merge_rule"] == L.MERGE_RULE
    expected = np.zeros((400, 400), np.uint8)
    for i, layer in enumerate(class_layers):
        expected[layer.data != 0] = i + 1
    assert np.array_equal(semantic.data, expected)

    viewer.layers.selection = set(class_layers)
    folder = tmp_path / "bundle"
    viewer.layers.save(str(folder), selected=True, plugin=PLUGIN)
    viewer.layers.selection = {semantic}
    viewer.layers.save(str(tmp_path / "map.tif"), selected=True, plugin=PLUGIN)

    for layer in [*class_layers, semantic]:
        viewer.layers.remove(layer)
    viewer.open(str(folder / "classes.json"), plugin=PLUGIN)
    back = viewer.open(str(tmp_path / "map.tif"), plugin=PLUGIN)[0]
    for name, original in zip(CLASSES, class_layers):
        assert np.array_equal(viewer.layers[name].data, original.data)
        assert viewer.layers[name].metadata["georeference"]["crs"] == "EPSG:32617"
    assert np.array_equal(back.data, expected)

    for name in CLASSES:
        viewer.layers.remove(name)
    viewer.layers.selection.active = back
    widget.split_layer()
    for name, original in zip(CLASSES, class_layers):
        assert np.array_equal(viewer.layers[name].data, original.data)


def test_bad_input_is_one_notification_and_settings_are_remembered(annotator, qtbot, tiny_model_dir):
    from napari.utils.notifications import notification_manager

    from maskdiffusion.napari.settings import load_settings

    viewer, widget = annotator
    assert load_settings().model_source == str(tiny_model_dir)
    widget.set_classes([])
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    assert widget.run() is None
    assert seen and "no classes" in seen[-1].message
    assert [ly.name for ly in viewer.layers] == ["neon_OSBS_029"]
    widget.source_combo.setCurrentText(str(tiny_model_dir / "missing"))
    assert not widget.run_button.isEnabled()
    widget.load_model()
    qtbot.waitUntil(lambda: not widget.loading, timeout=TIMEOUT_MS)
    assert "failed" in widget.model_status.text() and not widget.run_button.isEnabled()
    assert "missing" in seen[-1].message
    notification_manager.notification_ready.disconnect(seen.append)


def test_npe2_commands_and_widget_contribution(make_napari_viewer):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "MaskDiffusion annotator")
    assert widget.__class__.__name__ == "MaskDiffusionWidget"
    layer = viewer.add_labels(np.array([[0, 1], [2, 2]], np.uint8), name="hand made")
    viewer.layers.selection.active = layer
    get_app_model().commands.execute_command(f"{PLUGIN}.split_semantic_layer").result()
    assert [ly.name for ly in viewer.layers][1:] == ["label 1", "label 2"]
    get_app_model().commands.execute_command(f"{PLUGIN}.merge_class_layers").result()
    assert np.array_equal(viewer.layers["semantic map"].data, layer.data)


def test_class_table_presets_files_and_reorder(annotator, tmp_path):
    _, widget = annotator
    table = widget.class_table
    widget.preset_combo.setCurrentIndex(1)
    widget.preset_combo.activated.emit(1)
    assert [c.name for c in widget.classes()][:2] == ["impervious surfaces", "building"]
    assert len(widget.classes()) == 6 and widget.classes()[1].color == (0, 0, 255)
    widget.set_classes(["road", "tree"])
    table.add_class("roof", "roof | rooftop")
    assert widget.classes()[2].prompts == ("roof", "rooftop")
    table.setCurrentCell(2, 0)
    table.move_selected(-1)
    assert [c.name for c in widget.classes()] == ["road", "roof", "tree"]
    table.setCurrentCell(0, 0)
    table.remove_selected()
    table.set_color(0, (1, 2, 3))
    widget.save_class_file(tmp_path / "classes.json")
    widget.set_classes(["x"])
    widget.load_class_file(tmp_path / "classes.json")
    assert [(c.name, c.color) for c in widget.classes()][0] == ("roof", (1, 2, 3))
    table.add_class("roof")
    with pytest.raises(ValueError, match="duplicate"):
        widget.classes()


def test_all_planes_of_a_stack_unsupervised(make_napari_viewer, qtbot, tiny_model_dir):
    from maskdiffusion.napari.widget import ALL_PLANES, MaskDiffusionWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (2, 96, 128), dtype=np.uint8), name="stack", scale=(1, 0.5, 0.5))
    widget = MaskDiffusionWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.planes_combo.isVisibleTo(widget) and not widget._bands_row.isVisibleTo(widget)
    widget.planes_combo.setCurrentText(ALL_PLANES)
    widget.source_combo.setCurrentText(str(tiny_model_dir))
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("float32")
    widget.load_model()
    qtbot.waitUntil(lambda: not widget.loading, timeout=TIMEOUT_MS)
    widget.set_classes([])
    widget.unsupervised_spin.setValue(3)
    widget.tile_spin.setValue(64)
    widget.overlap_spin.setValue(0)
    run_and_wait(widget, qtbot)
    clusters = L.class_layers(viewer, "stack")
    assert [ly.name for ly in clusters] == ["cluster 1", "cluster 2", "cluster 3"]
    total = sum(ly.data.astype(int) for ly in clusters)
    assert total.shape == (2, 96, 128) and (total == 1).all()
    assert tuple(clusters[0].scale) == (1, 0.5, 0.5)


def test_closing_the_widget_mid_run_drops_the_result(annotator, qtbot):
    viewer, widget = annotator
    widget.tile_spin.setValue(128)
    before = [ly.name for ly in viewer.layers]
    worker = widget.run()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.window.remove_dock_widget(widget)
    widget.deleteLater()
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    qtbot.wait(50)
    assert [ly.name for ly in viewer.layers] == before

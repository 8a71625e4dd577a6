"""The refine widget on a real napari viewer (run under ``xvfb-run``) with the tiny model's run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

CLASSES = ["road", "building", "tree"]


@pytest.fixture(scope="module")
def run(tiny_model_dir):
    from maskdiffusion import segment
    from maskdiffusion.geo.synthetic import make_potsdam_like_tile
    from maskdiffusion.model.loading import load_model

    image, _ = make_potsdam_like_tile(256, seed=2)
    rgb = np.ascontiguousarray(image[..., :3])
    return rgb, segment(rgb, CLASSES, load_model(tiny_model_dir, device="cpu"), keep_features=True)


@pytest.fixture
def annotated(make_napari_viewer, run):
    """A viewer with the image, its class layers as the annotator makes them, and the refine widget."""
    from maskdiffusion.napari import layers as L
    from maskdiffusion.napari import refine_session as S
    from maskdiffusion.napari.refine_widget import RefineWidget

    rgb, result = run
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgb, name="tile", rgb=True)
    image = L.describe_image(layer)
    L.apply_layer_data(viewer, L.result_layer_data(image, {(): result}, semantic=True))
    S.forget()
    S.remember_results(image, {(): result})
    widget = RefineWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Refine")
    yield viewer, widget
    S.forget()


def _layers(viewer):
    return {name: viewer.layers[name] for name in CLASSES}


def _paint(viewer):
    """Strokes: 'tree' painted in a block (erased from the others), 'road' erased in a corner."""
    layers = _layers(viewer)
    layers["tree"].brush_size = 24
    for x in (60, 80, 100):
        layers["tree"].paint((120, x), 1)
    painted = layers["tree"].data.astype(bool)
    for name in ("road", "building"):
        layers[name].data_setitem(np.nonzero(painted & (layers[name].data != 0)), 0)
    corner = np.zeros(painted.shape, bool)
    corner[:12, :12] = True
    layers["road"].data_setitem(np.nonzero(corner & (layers["road"].data != 0)), 0)
    return {name: ly.data.copy() for name, ly in layers.items()}


def test_refine_changes_only_untouched_pixels_and_ctrl_z_restores(annotated):
    viewer, widget = annotated
    assert widget.image_combo.currentText() == "tile" and widget.refine_button.isEnabled()
    draft = {name: ly.data.copy() for name, ly in _layers(viewer).items()}
    before = _paint(viewer)
    touched = np.logical_or.reduce([before[n] != draft[n] for n in CLASSES])
    widget.refine_button.click()
    after = {name: ly.data.copy() for name, ly in _layers(viewer).items()}
    for name in CLASSES:
        assert np.array_equal(after[name][touched], before[name][touched])
    assert any(not np.array_equal(after[n], before[n]) for n in CLASSES)
    assert (sum(after[n].astype(int) for n in CLASSES)[~touched] == 1).all()

    for name, layer in _layers(viewer).items():
        if not np.array_equal(after[name], before[name]):
            layer.undo()
    for name, layer in _layers(viewer).items():
        assert np.array_equal(layer.data, before[name])
    widget.refine_button.click()
    session = widget.session()
    assert len(session.history) == 1
    for name, layer in _layers(viewer).items():
        assert np.array_equal(layer.data, after[name])

    widget.undo_button.click()
    for name, layer in _layers(viewer).items():
        assert np.array_equal(layer.data, before[name])


def test_on_the_semantic_map_one_ctrl_z_undoes_a_refinement(annotated):
    viewer, widget = annotated
    semantic = viewer.layers["semantic map"]
    widget.target_combo.setCurrentText("semantic map")
    start = semantic.data.copy()
    semantic.data_setitem(np.nonzero(np.pad(np.ones((20, 40), bool), ((100, 136), (100, 116)))), 3)
    painted = semantic.data.copy()
    widget.refine()
    refined = semantic.data.copy()
    assert not np.array_equal(refined, painted) and (refined[100:120, 100:140] == 3).all()
    semantic.undo()
    assert np.array_equal(semantic.data, painted)
    semantic.undo()
    assert np.array_equal(semantic.data, start)
    widget.refine()
    assert len(widget.session().history) == 1

    assert widget.add_example_class("pond", (0, 0, 250)) is semantic and semantic.selected_label == 4
    semantic.data_setitem(np.nonzero(np.pad(np.ones((16, 16), bool), ((200, 40), (20, 220)))), 4)
    widget.refine()
    assert (semantic.data[200:216, 20:36] == 4).all() and "pond" not in [ly.name for ly in viewer.layers]


def test_class_by_example_confidence_and_session_reopen(annotated, make_napari_viewer, tmp_path):
    viewer, widget = annotated
    pond = widget.add_example_class("pond", (10, 20, 200))
    assert pond is not None and pond.name == "pond" and viewer.layers.selection.active is pond
    pond.data_setitem(np.nonzero(np.pad(np.ones((16, 16), bool), ((200, 40), (200, 40)))), 1)
    widget.refine()
    assert (pond.data[200:216, 200:216] == 1).all()
    widget.confidence_check.setChecked(True)
    assert widget.next_unsure_region() is not None

    folder = widget.save_session(tmp_path / "tile")
    names = [*CLASSES, "pond"]
    saved = {n: viewer.layers[n].data.copy() for n in names}
    other = make_napari_viewer()
    from maskdiffusion.napari.refine_widget import RefineWidget

    reopened = RefineWidget(other)
    reopened.open_session(folder)
    for n in names:
        assert np.array_equal(other.layers[n].data, saved[n])
        assert other.layers[n].metadata["image"] == "tile"
    assert reopened.refine_button.isEnabled()

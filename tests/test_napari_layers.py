"""Results to layers and back, and a run's layers kept in step with its sessions, on napari's
ViewerModel (no Qt needed)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image  # noqa: E402

from maskdiffusion.core.classes import ClassSpec, as_class_specs  # noqa: E402
from maskdiffusion.core.params import SegmentParams  # noqa: E402
from maskdiffusion.core.result import SegmentationResult  # noqa: E402
from maskdiffusion.errors import BadInputError  # noqa: E402
from maskdiffusion.napari import layers  # noqa: E402
from maskdiffusion.napari.images import current_plane, describe_image, read_plane  # noqa: E402
from maskdiffusion.napari.results import apply_results  # noqa: E402
from maskdiffusion.napari.state import AnnotatorState  # noqa: E402

CLASSES = as_class_specs([ClassSpec("road", ("street", "asphalt"), (128, 64, 128)), "tree", "building"])


def fake_result(labels: np.ndarray, classes=CLASSES) -> SegmentationResult:
    return SegmentationResult(
        labels=labels.astype(np.uint8),
        classes=list(classes),
        confidence=np.full(labels.shape, 0.5, np.float32),
        attention=np.zeros((len(classes), 1, 1), np.float32),
        attention_stride=16.0,
        params=SegmentParams(tile_size=128),
        model="tiny-test-model",
    )


def stripes(shape=(32, 48), n=3) -> np.ndarray:
    """A label map of ``n`` vertical stripes, values 1..n."""
    return (np.arange(shape[1])[None, :] * n // shape[1]).repeat(shape[0], 0) + 1


def rgb_layer(shape=(32, 48), **kwargs) -> Image:
    rng = np.random.default_rng(0)
    return Image(rng.integers(0, 255, (*shape, 3), dtype=np.uint8), rgb=True, **kwargs)


PENDING: list = []


def paint(layer, coord, label=layers.STROKE):
    """A stroke as napari makes it: painted, then synced at the next turn of the event loop."""
    layer.selected_label = label
    layer.paint(coord, label)
    while PENDING:
        PENDING.pop(0)()


def run_into(viewer, state, image_layer, results, **options):
    """Apply results synchronously (all pieces at once); strokes sync when :func:`paint` says."""
    gen = apply_results(viewer, state, image_layer, describe_image(image_layer), results, **options)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            applied = stop.value
            break
    applied.run.defer = lambda f: f()
    for layer in applied.run.all_layers:
        layer.events.paint.disconnect()
        applied.run.bind(layer, tuple, defer=PENDING.append)
    return applied


def consistent(run) -> bool:
    """Every pixel in exactly one class layer or none, as the session says."""
    session = run.session(())
    stack = np.stack([np.asarray(ly.data) != 0 for ly in run.layers])
    shown = np.where(stack.any(0), stack.argmax(0) + 1, 0)
    return bool((stack.sum(0) <= 1).all() and np.array_equal(shown, session.labels))


def test_describe_rgb_gray_and_band_stack():
    rgb = describe_image(rgb_layer(scale=(0.5, 0.5), translate=(10, 20), name="ortho"))
    assert (rgb.shape, rgb.band_axis, rgb.band_names) == ((32, 48), 2, ("R", "G", "B"))
    assert rgb.scale == (0.5, 0.5) and rgb.translate == (10, 20) and rgb.planes() == [()]
    gray = describe_image(Image(np.zeros((3, 16, 16), np.uint16)))
    assert gray.band_axis is None and gray.stack_shape == (3,) and gray.planes() == [(0,), (1,), (2,)]
    stack = Image(np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8), scale=(1, 2, 2),
                  metadata={"band_axis": 0, "band_names": ["R", "G", "B", "IR"]})
    info = describe_image(stack)
    assert (info.shape, info.band_axis, info.scale, info.n_planes) == ((8, 8), 0, (2.0, 2.0), 1)
    assert info.default_bands() == (0, 1, 2)
    plane = read_plane(stack, info)
    assert plane.shape == (8, 8, 4) and np.array_equal(plane[..., 3], stack.data[3])


def test_read_plane_of_a_banded_stack():
    data = np.random.default_rng(1).integers(0, 255, (2, 3, 5, 6), dtype=np.uint8)
    layer = Image(data, axis_labels=("z", "band", "y", "x"))
    info = describe_image(layer)
    assert info.band_axis == 1 and info.shape == (2, 5, 6)
    assert np.array_equal(read_plane(layer, info, (1,)), np.moveaxis(data[1], 0, -1))
    assert current_plane(layer, info, (1, 0, 2, 2)) == (1,)


def test_one_class_layer_per_class_with_colour_and_metadata():
    image = describe_image(rgb_layer(scale=(0.5, 0.5), translate=(10, 20), name="ortho",
                                     metadata={"georeference": {"crs": "EPSG:32633"}}))
    labels = stripes()
    out = list(layers.result_layer_data(image, {(): fake_result(labels)}, semantic=True, confidence=True))
    assert [(kw["name"], t) for _, kw, t in out] == [("road", "labels"), ("tree", "labels"), ("building", "labels"),
                                                      ("semantic map", "labels"), ("confidence", "image")]
    for k, (data, kw, _) in enumerate(out[:3], start=1):
        spec = CLASSES[k - 1]
        assert data.dtype == np.uint8 and np.array_equal(data, labels == k)
        assert np.allclose(kw["colormap"].map(np.array([1]))[0][:3] * 255, spec.color, atol=1)
        assert kw["colormap"].map(np.array([0]))[0][3] == 0
        md = kw["metadata"]
        assert (md["kind"], md["class"], md["value"], md["image"]) == ("class", spec.name, k, "ortho")
        assert md["prompts"] == list(spec.prompts) and md["parameters"]["tile_size"] == 128
        assert md["georeference"] == {"crs": "EPSG:32633"} and md["model"] == "tiny-test-model"
        assert kw["scale"] == (0.5, 0.5) and kw["translate"] == (10, 20)
    assert np.array_equal(out[3][0], labels)


def test_classes_painted_while_the_run_ran_get_their_metadata_and_no_new_array():
    """Layers streamed during a run are given the run's labels band by band: their tuples carry
    the class metadata and no whole-plane array (36 MB and ~0.1 s each at 6000²)."""
    image = describe_image(rgb_layer(name="ortho"))
    labels = stripes()
    out = list(layers.result_layer_data(image, {(): fake_result(labels)}, existing=2))
    assert [data is None for data, _, _ in out] == [True, True, False]
    assert [kw["metadata"]["value"] for _, kw, _ in out] == [1, 2, 3] and out[1][1]["name"] == "tree"
    assert np.array_equal(out[2][0], labels == 3)


def test_write_into_layer_outside_napari_history_changes_only_what_differs():
    layer = napari.layers.Labels(np.zeros((20, 30), np.uint8))
    values = np.zeros((10, 10), np.uint8)
    values[2:5, 3:7] = 1
    assert layers.write_into_layer(layer, values, (), (5, 15, 10, 20)) == 12
    assert layer.data[7:10, 13:17].all() and layer.data.sum() == 12
    assert not layer._undo_history
    assert layers.write_into_layer(layer, values, (), (5, 15, 10, 20)) == 0
    assert layers.write_into_layer(layer, np.zeros((20, 30), np.uint8), history=True) == 12
    layer.undo()
    assert layer.data.sum() == 12


def test_a_new_layer_is_added_hidden_and_shown_by_a_piece_that_ends_its_turn():
    """napari's insertion and the upload of the layer's texture at the redraw after it is shown
    are separate turns: adding is one piece, showing another that says the turn ends there."""
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    gen = apply_results(viewer, state, image, describe_image(image), {(): fake_result(stripes())})
    pieces = []
    while True:
        try:
            ends_turn = next(gen)
        except StopIteration:
            break
        pieces.append((ends_turn, [(ly.name, ly.visible) for ly in viewer.layers[1:]]))
    shows = [layer_states for ends_turn, layer_states in pieces if ends_turn]
    assert [names[-1] for names in shows] == [("road", True), ("tree", True), ("building", True)]
    added = [layer_states for ends_turn, layer_states in pieces if not ends_turn and layer_states]
    assert added[0] == [("road", False)], "added hidden, shown by a later piece"


def test_a_stroke_under_another_class_layer_wins_where_it_was_painted():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    run = run_into(viewer, state, image, {(): fake_result(stripes())}).run
    road, tree = run.layers[0], run.layers[1]
    assert road.data[5, 5] == 1 and tree.data[5, 5] == 0
    paint(tree, (5, 5))
    assert tree.data[5, 5] == layers.STROKE and road.data[5, 5] == 0, "the stroke shows, the road gives it up"
    session = run.session(())
    assert session.labels[5, 5] == 2 and session.edited[5, 5] and consistent(run)
    paint(tree, (5, 5))
    assert len(session.history) == 1, "painting a stroke over itself again adds nothing"
    assert road.data[25, 8] == layers.DRAFT and not session.edited[25, 8]
    paint(road, (25, 8), layers.STROKE)
    assert road.data[25, 8] == layers.STROKE and session.edited[25, 8] and session.labels[25, 8] == 1, \
        "painting a class over itself marks it as the annotator's"


def test_erasing_releases_pixels_and_undo_in_any_layer_keeps_one_class_per_pixel():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    run = run_into(viewer, state, image, {(): fake_result(stripes())}).run
    road, tree, building = run.layers
    session = run.session(())
    paint(tree, (5, 5))
    paint(building, (20, 10))
    paint(tree, (10, 20), 0)
    assert session.labels[10, 20] == 0 and not session.edited[10, 20], "erased pixels are free for refinement"
    assert consistent(run) and len(session.history) == 3
    from app_model.types import KeyBinding

    for layer in (road, building, tree):
        layer.keymap[KeyBinding.from_str("Control-Z")](layer)
        assert consistent(run)
    assert np.array_equal(session.labels, stripes()) and not session.edited.any()
    assert run.redo(()) and consistent(run) and session.labels[5, 5] == 2


def test_a_second_run_is_one_undo_step_for_all_layers_and_names_replaced_strokes():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    run = run_into(viewer, state, image, {(): fake_result(stripes())}).run
    paint(run.layers[1], (5, 5))
    applied = run_into(viewer, state, image, {(): fake_result(np.full((32, 48), 3))})
    assert applied.run is run and not applied.added and applied.replaced_edits == ["tree"]
    assert len(viewer.layers) == 4 and run.layers[2].data.all() and consistent(run)
    assert run.undo(()) and consistent(run) and run.layers[1].data[5, 5] == layers.STROKE


def test_other_classes_or_another_image_get_their_own_layers():
    viewer, state = ViewerModel(), AnnotatorState()
    a, b = viewer.add_layer(rgb_layer(name="a")), viewer.add_layer(rgb_layer(name="b"))
    first = run_into(viewer, state, a, {(): fake_result(stripes())})
    second = run_into(viewer, state, b, {(): fake_result(stripes())})
    assert len(second.added) == 3 and state.run_of(second.added[0]) is second.run
    assert state.run_of(first.added[0]) is first.run and state.run_of(a) is first.run
    a.name = "renamed"
    assert state.run_of(a) is first.run, "runs are keyed by the layer, not its name"


def test_current_plane_of_a_stack():
    viewer, state = ViewerModel(), AnnotatorState()
    stack = viewer.add_image(np.zeros((3, 32, 48), np.uint8), name="stack")
    run = run_into(viewer, state, stack, {(1,): fake_result(stripes())}).run
    road = run.layers[0]
    assert road.data.shape == (3, 32, 48) and not road.data[0].any() and road.data[1].any()
    assert list(run.sessions) == [(1,)]


def test_merge_later_layer_wins_and_split_round_trips():
    viewer = ViewerModel()
    base = {"image": "ortho", "software": layers.SOFTWARE}
    masks = [np.zeros((8, 8), np.uint8) for _ in CLASSES]
    masks[0][:] = 1
    masks[1][:4] = 1
    masks[2][:2] = 1
    for k, (mask, spec) in enumerate(zip(masks, CLASSES), start=1):
        data, kwargs, _ = layers.class_layer_data(mask, spec, k, base)
        viewer.add_labels(data, **kwargs)
    semantic = layers.merge_class_layers(viewer)
    assert semantic.metadata["kind"] == "semantic" and semantic.metadata["merge_rule"] == layers.MERGE_RULE
    assert (semantic.data[:2] == 3).all() and (semantic.data[2:4] == 2).all() and (semantic.data[4:] == 1).all()
    assert [c["name"] for c in semantic.metadata["classes"]] == ["road", "tree", "building"]
    for spec in CLASSES:
        viewer.layers.remove(spec.name)
    split = layers.split_semantic_layer(viewer, semantic)
    assert [ly.name for ly in split] == ["road", "tree", "building"]
    assert np.array_equal(split[2].data, semantic.data == 3)
    assert split[0].metadata["prompts"] == ["street", "asphalt"] and split[0].metadata["value"] == 1
    assert np.allclose(split[0].colormap.map(np.array([1]))[0][:3] * 255, (128, 64, 128), atol=1)


def test_split_any_labels_layer_by_value():
    viewer = ViewerModel()
    layer = viewer.add_labels(np.array([[0, 1], [2, 7]], np.uint8), name="hand made")
    split = layers.split_semantic_layer(viewer, layer)
    assert [ly.name for ly in split] == ["label 1", "label 2", "label 7"]
    with pytest.raises(BadInputError, match="already a class layer"):
        layers.split_semantic_layer(viewer, split[0])


def test_export_labels_class_semantic_and_plain():
    labels, classes = layers.export_labels(np.array([[0, 1]], np.uint8),
                                           {"kind": "class", "class": "tree", "color": [0, 255, 0]})
    assert [c.name for c in classes] == ["tree"] and classes[0].color == (0, 255, 0)
    assert labels.tolist() == [[0, 1]]
    meta = {"kind": "semantic", "classes": [{"name": "a", "value": 1}, {"name": "b", "value": 2}]}
    labels, classes = layers.export_labels(np.array([[0, 2]], np.uint8), meta)
    assert [c.name for c in classes] == ["a", "b"] and labels.tolist() == [[0, 2]]
    _, classes = layers.export_labels(np.array([[0, 3]], np.int32), {})
    assert [c.name for c in classes] == ["label 1", "label 2", "label 3"]
    with pytest.raises(BadInputError, match="negative"):
        layers.export_labels(np.array([[-1, 3]], np.int32), {})

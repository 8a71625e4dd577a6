"""An image's annotation kept in step with its class layers, and layer tuples, on napari's
ViewerModel (no Qt needed: the annotation's turns run at once)."""

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
from maskdiffusion.geo.label_files import export_labels  # noqa: E402
from maskdiffusion.napari import layers  # noqa: E402
from maskdiffusion.napari.annotation import Annotation, AnnotatorState  # noqa: E402
from maskdiffusion.napari.images import current_plane, describe_image, read_plane  # noqa: E402

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


def later(callback, *_):
    """The annotation's next turn: run by :func:`flush` (napari announces a paint before it
    writes it, so a stroke is taken at a later turn)."""
    PENDING.append(callback)


def flush():
    while PENDING:
        PENDING.pop(0)()


def annotate(viewer, state, image_layer, results, annotation=None) -> tuple[Annotation, dict]:
    """A run's results into the viewer as the Segment tab puts them (the turns run at once)."""
    import weakref

    if annotation is None:
        annotation = state.add(Annotation(viewer, describe_image(image_layer), image_ref=weakref.ref(image_layer),
                                          defer=later))
    annotation.start_run(next(iter(results.values())).classes)
    changed = annotation.finish_run(results, lambda plane: {"plane": list(plane)})
    flush()
    return annotation, changed


def paint(annotation, layer, coord, label=layers.STROKE):
    """A stroke as napari makes it (the annotation takes it at its next turn: here at once)."""
    layer.selected_label = label
    layer.paint(coord, label)
    flush()


def consistent(annotation, plane=()) -> bool:
    """Every pixel in exactly one class layer or none, as the session says."""
    stack = np.stack([np.asarray(ly.data[plane]) != 0 for ly in annotation.ordered_layers()])
    shown = np.where(stack.any(0), stack.argmax(0) + 1, 0)
    return bool((stack.sum(0) <= 1).all() and np.array_equal(shown, annotation.session(plane).labels))


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


def test_one_class_layer_per_class_with_colour_metadata_and_identity():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(scale=(0.5, 0.5), translate=(10, 20), name="ortho",
                                       metadata={"georeference": {"crs": "EPSG:32633"}}))
    labels = stripes()
    annotation, changed = annotate(viewer, state, image, {(): fake_result(labels)})
    assert [ly.name for ly in changed["added"]] == ["road", "tree", "building"]
    for k, layer in enumerate(annotation.ordered_layers(), start=1):
        spec = CLASSES[k - 1]
        assert layer.data.dtype == np.uint8 and np.array_equal(layer.data, labels == k)
        assert np.allclose(layer.colormap.map(np.array([1]))[0][:3] * 255, spec.color, atol=1)
        assert layer.colormap.map(np.array([0]))[0][3] == 0
        md = layer.metadata
        assert (md["kind"], md["class"], md["image"]) == ("class", spec.name, "ortho")
        assert md["prompts"] == list(spec.prompts) and md["parameters"]["tile_size"] == 128
        assert md["georeference"] == {"crs": "EPSG:32633"} and md["model"] == "tiny-test-model"
        assert md["annotation"] == annotation.id and annotation.value_of(md["class_id"]) == k
        assert tuple(layer.scale) == (0.5, 0.5) and tuple(layer.translate) == (10, 20)
        assert state.annotation_of(layer) is annotation
    assert state.annotation_of(image) is annotation
    image.name = "renamed"
    assert state.annotation_of(image) is annotation, "bound by identity, not by name"


def test_write_into_layer_outside_napari_history_changes_only_what_differs():
    layer = napari.layers.Labels(np.zeros((20, 30), np.uint8))
    values = np.zeros((10, 10), np.uint8)
    values[2:5, 3:7] = 1
    assert layers.write_into_layer(layer, values, (), (5, 15, 10, 20)) == 12
    assert layer.data[7:10, 13:17].all() and layer.data.sum() == 12
    assert layers.write_into_layer(layer, values, (), (5, 15, 10, 20)) == 0
    layer.undo()
    assert layer.data.sum() == 12, "napari's own history did not record it"
    assert layers.write_into_layer(layer, np.zeros((20, 30), np.uint8), history=True) == 12
    layer.undo()
    assert layer.data.sum() == 12


def test_a_stroke_under_another_class_layer_wins_where_it_was_painted():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    annotation, _ = annotate(viewer, state, image, {(): fake_result(stripes())})
    road, tree, _ = annotation.ordered_layers()
    assert road.data[5, 5] == 1 and tree.data[5, 5] == 0
    paint(annotation, tree, (5, 5))
    assert tree.data[5, 5] == layers.STROKE and road.data[5, 5] == 0, "the stroke shows, the road gives it up"
    session = annotation.session()
    assert session.labels[5, 5] == 2 and session.edited[5, 5] and consistent(annotation)
    steps = len(session.history)
    paint(annotation, tree, (5, 5))
    assert len(session.history) == steps, "painting a stroke over itself again adds nothing"
    assert road.data[25, 8] == layers.DRAFT and not session.edited[25, 8]
    paint(annotation, road, (25, 8), layers.STROKE)
    assert road.data[25, 8] == layers.STROKE and session.edited[25, 8] and session.labels[25, 8] == 1, \
        "painting a class over itself marks it as the annotator's"


def test_erasing_releases_pixels_and_undo_in_any_layer_keeps_one_class_per_pixel():
    from app_model.types import KeyBinding

    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    annotation, _ = annotate(viewer, state, image, {(): fake_result(stripes())})
    road, tree, building = annotation.ordered_layers()
    session = annotation.session()
    paint(annotation, tree, (5, 5))
    paint(annotation, building, (20, 10))
    paint(annotation, tree, (10, 20), 0)
    assert session.labels[10, 20] == 0 and not session.edited[10, 20], "erased pixels are free for refinement"
    assert consistent(annotation) and len(session.history) == 3
    for layer in (road, building, tree):
        layer.keymap[KeyBinding.from_str("Control-Z")](layer)
        flush()
        assert consistent(annotation)
    assert np.array_equal(session.labels, stripes()) and not session.edited.any()
    assert annotation.redo(())
    flush()
    assert consistent(annotation) and session.labels[5, 5] == 2


def test_a_second_run_is_one_undo_step_for_all_layers_and_names_replaced_strokes():
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    annotation, _ = annotate(viewer, state, image, {(): fake_result(stripes())})
    tree = annotation.ordered_layers()[1]
    paint(annotation, tree, (5, 5))
    again, changed = annotate(viewer, state, image, {(): fake_result(np.full((32, 48), 3))}, annotation)
    assert again is annotation and not changed["added"] and changed["replaced"] == ["tree"]
    assert len(viewer.layers) == 4 and annotation.ordered_layers()[2].data.all() and consistent(annotation)
    assert annotation.undo(())
    flush()
    assert consistent(annotation) and tree.data[5, 5] == layers.STROKE


def test_a_deleted_class_layer_deletes_its_class_and_its_pixels_become_unlabelled():
    """The label values of the classes after it move down; the layers know theirs by id."""
    viewer, state = ViewerModel(), AnnotatorState()
    image = viewer.add_layer(rgb_layer(name="ortho"))
    annotation, _ = annotate(viewer, state, image, {(): fake_result(stripes())})
    tree = annotation.ordered_layers()[1]
    viewer.layers.remove(tree)
    state.layer_removed(tree)
    flush()
    assert [spec.name for _, spec in annotation.classes] == ["road", "building"]
    assert set(np.unique(annotation.session().labels)) == {0, 1, 2} and consistent(annotation)
    building = viewer.layers["building"]
    paint(annotation, building, (5, 5))
    assert annotation.session().labels[5, 5] == 2 and consistent(annotation)
    for _ in range(2):
        annotation.undo(())
        flush()
    assert [spec.name for _, spec in annotation.classes] == ["road", "tree", "building"]
    assert np.array_equal(annotation.session().labels, stripes()) and consistent(annotation)
    assert "tree" in viewer.layers and viewer.layers["tree"] is not tree, "a new layer shows the class again"


def test_current_plane_of_a_stack():
    viewer, state = ViewerModel(), AnnotatorState()
    stack = viewer.add_image(np.zeros((3, 32, 48), np.uint8), name="stack")
    annotation, _ = annotate(viewer, state, stack, {(1,): fake_result(stripes())})
    road = annotation.ordered_layers()[0]
    assert road.data.shape == (3, 32, 48) and not road.data[0].any() and road.data[1].any()
    assert list(annotation.sessions) == [(1,)]


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
    labels, classes = export_labels(np.array([[0, 1]], np.uint8),
                                    {"kind": "class", "class": "tree", "color": [0, 255, 0]})
    assert [c.name for c in classes] == ["tree"] and classes[0].color == (0, 255, 0)
    assert labels.tolist() == [[0, 1]]
    meta = {"kind": "semantic", "classes": [{"name": "a", "value": 1}, {"name": "b", "value": 2}]}
    labels, classes = export_labels(np.array([[0, 2]], np.uint8), meta)
    assert [c.name for c in classes] == ["a", "b"] and labels.tolist() == [[0, 2]]
    _, classes = export_labels(np.array([[0, 3]], np.int32), {})
    assert [c.name for c in classes] == ["label 1", "label 2", "label 3"]
    with pytest.raises(BadInputError, match="negative"):
        export_labels(np.array([[-1, 3]], np.int32), {})

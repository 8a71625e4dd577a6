"""Results to layers and back (maskdiffusion.napari.layers), on napari's ViewerModel: no Qt needed."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402
from napari.layers import Image  # noqa: E402

from maskdiffusion.core.classes import ClassSpec, as_class_specs  # noqa: E402
from maskdiffusion.core.params import SegmentParams  # noqa: E402
from maskdiffusion.core.result import SegmentationResult  # noqa: E402
from maskdiffusion.napari import layers as L  # noqa: E402

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
    return (np.arange(shape[1])[None, :] * n // shape[1]).repeat(shape[0], 0)


def rgb_layer(shape=(32, 48), **kwargs) -> Image:
    rng = np.random.default_rng(0)
    return Image(rng.integers(0, 255, (*shape, 3), dtype=np.uint8), rgb=True, **kwargs)


def test_describe_rgb_gray_and_band_stack():
    rgb = L.describe_image(rgb_layer(scale=(0.5, 0.5), translate=(10, 20), name="ortho"))
    assert (rgb.shape, rgb.band_axis, rgb.band_names) == ((32, 48), 2, ("R", "G", "B"))
    assert rgb.scale == (0.5, 0.5) and rgb.translate == (10, 20) and rgb.planes() == [()]

    gray = L.describe_image(Image(np.zeros((3, 16, 16), np.uint16)))
    assert gray.band_axis is None and gray.stack_shape == (3,) and gray.planes() == [(0,), (1,), (2,)]

    stack = Image(np.arange(4 * 8 * 8, dtype=np.uint8).reshape(4, 8, 8), scale=(1, 2, 2),
                  metadata={"band_axis": 0, "band_names": ["R", "G", "B", "IR"]})
    info = L.describe_image(stack)
    assert (info.shape, info.band_axis, info.scale, info.n_planes) == ((8, 8), 0, (2.0, 2.0), 1)
    assert info.default_bands() == (0, 1, 2)
    plane = L.read_plane(stack, info)
    assert plane.shape == (8, 8, 4) and np.array_equal(plane[..., 3], stack.data[3])


def test_read_plane_of_a_banded_stack():
    data = np.random.default_rng(1).integers(0, 255, (2, 3, 5, 6), dtype=np.uint8)
    layer = Image(data, axis_labels=("z", "band", "y", "x"))
    info = L.describe_image(layer)
    assert info.band_axis == 1 and info.shape == (2, 5, 6)
    assert np.array_equal(L.read_plane(layer, info, (1,)), np.moveaxis(data[1], 0, -1))
    assert L.current_plane(layer, info, (1, 0, 2, 2)) == (1,)


def test_one_binary_layer_per_class_with_colour_and_metadata():
    image = L.describe_image(rgb_layer(scale=(0.5, 0.5), translate=(10, 20), name="ortho",
                                       metadata={"georeference": {"crs": "EPSG:32633"}}))
    labels = stripes()
    out = L.result_layer_data(image, {(): fake_result(labels)}, semantic=True, confidence=True)
    kinds = [(kw["name"], t) for _, kw, t in out]
    assert kinds == [("confidence", "image"), ("semantic map", "labels"),
                     ("road", "labels"), ("tree", "labels"), ("building", "labels")]
    for k, (data, kw, _) in enumerate(out[2:]):
        spec = CLASSES[k]
        assert data.dtype == np.uint8 and np.array_equal(data, labels == k)
        assert np.allclose(kw["colormap"].map(np.array([1]))[0][:3] * 255, spec.color, atol=1)
        assert kw["colormap"].map(np.array([0]))[0][3] == 0
        md = kw["metadata"]
        assert (md["kind"], md["class"], md["image"], md["model"]) == ("class", spec.name, "ortho", "tiny-test-model")
        assert md["prompts"] == list(spec.prompts) and md["parameters"]["tile_size"] == 128
        assert md["georeference"] == {"crs": "EPSG:32633"}
        assert kw["scale"] == (0.5, 0.5) and kw["translate"] == (10, 20)
    semantic = out[1][0]
    assert np.array_equal(semantic, labels + 1)


def test_run_again_updates_layers_as_one_undo_and_flags_hand_edits():
    viewer = ViewerModel()
    image = L.describe_image(viewer.add_layer(rgb_layer(name="ortho")))
    first = stripes()
    added, updated, edited = L.apply_layer_data(viewer, L.result_layer_data(image, {(): fake_result(first)}))
    assert [ly.name for ly in added] == ["road", "tree", "building"] and not updated and not edited
    road = viewer.layers["road"]
    road.paint((5, 40), 1, refresh=False)
    painted = road.data.copy()

    second = np.zeros_like(first)
    added, updated, edited = L.apply_layer_data(viewer, L.result_layer_data(image, {(): fake_result(second)}))
    assert not added and len(updated) == 3 and edited == [road]
    assert len(viewer.layers) == 4 and road.data.all()
    road.undo()
    assert np.array_equal(road.data, painted)
    road.redo()
    assert road.data.all()


def test_same_class_names_of_another_image_get_their_own_layers():
    viewer = ViewerModel()
    a = L.describe_image(viewer.add_layer(rgb_layer(name="a")))
    b = L.describe_image(viewer.add_layer(rgb_layer(name="b")))
    L.apply_layer_data(viewer, L.result_layer_data(a, {(): fake_result(stripes())}))
    added, updated, _ = L.apply_layer_data(viewer, L.result_layer_data(b, {(): fake_result(stripes())}))
    assert [ly.name for ly in added] == ["road [b]", "tree [b]", "building [b]"] and not updated


def test_current_plane_of_a_stack_writes_only_that_plane():
    viewer = ViewerModel()
    layer = viewer.add_image(np.zeros((3, 32, 48), np.uint8), name="stack")
    image = L.describe_image(layer)
    L.apply_layer_data(viewer, L.result_layer_data(image, {(1,): fake_result(stripes())}), [(1,)])
    road = viewer.layers["road"]
    assert road.data.shape == (3, 32, 48) and not road.data[0].any() and road.data[1].any()
    L.apply_layer_data(viewer, L.result_layer_data(image, {(2,): fake_result(stripes())}), [(2,)])
    assert road.data[1].any() and road.data[2].any()
    road.undo()
    assert road.data[1].any() and not road.data[2].any()


def test_merge_later_layer_wins_and_split_round_trips():
    viewer = ViewerModel()
    image = L.describe_image(viewer.add_layer(rgb_layer(name="ortho")))
    L.apply_layer_data(viewer, L.result_layer_data(image, {(): fake_result(stripes())}))
    tree, building = viewer.layers["tree"], viewer.layers["building"]
    tree.data[:] = 0
    tree.data[:4] = 1
    building.data[:] = 0
    building.data[:2] = 1
    semantic = L.merge_class_layers(viewer, "ortho")
    assert semantic.metadata["kind"] == "semantic" and semantic.metadata["merge_rule"] == L.MERGE_RULE
    assert (semantic.data[:2] == 3).all() and (semantic.data[2:4] == 2).all()
    assert np.array_equal(semantic.data[4:] == 1, viewer.layers["road"].data[4:] == 1)
    assert [c["name"] for c in semantic.metadata["classes"]] == ["road", "tree", "building"]

    for name in ("road", "tree", "building"):
        viewer.layers.remove(name)
    viewer.layers.selection.active = semantic
    split = L.split_semantic_layer(viewer)
    assert [ly.name for ly in split] == ["road", "tree", "building"]
    assert np.array_equal(split[2].data, semantic.data == 3)
    assert split[0].metadata["prompts"] == ["street", "asphalt"]
    assert np.allclose(split[0].colormap.map(np.array([1]))[0][:3] * 255, (128, 64, 128), atol=1)


def test_split_any_labels_layer_by_value():
    viewer = ViewerModel()
    layer = viewer.add_labels(np.array([[0, 1], [2, 7]], np.uint8), name="hand made")
    split = L.split_semantic_layer(viewer, layer)
    assert [ly.name for ly in split] == ["label 1", "label 2", "label 7"]
    with pytest.raises(ValueError, match="already a class layer"):
        L.split_semantic_layer(viewer, split[0])


def test_export_labels_class_semantic_and_plain():
    labels, classes = L.export_labels(np.array([[0, 1]], np.uint8), {"kind": "class", "class": "tree",
                                                                        "color": [0, 255, 0]})
    assert [c.name for c in classes] == ["unlabelled", "tree"] and classes[1].color == (0, 255, 0)
    meta = {"kind": "semantic", "classes": [{"name": "a", "value": 1}, {"name": "b", "value": 2}]}
    labels, classes = L.export_labels(np.array([[0, 2]], np.uint8), meta)
    assert [c.name for c in classes] == ["unlabelled", "a", "b"]
    _, classes = L.export_labels(np.array([[0, 3]], np.int32), {})
    assert [c.name for c in classes] == ["unlabelled", "label 1", "label 2", "label 3"]
    with pytest.raises(ValueError, match="negative"):
        L.export_labels(np.array([[-1, 3]], np.int32), {})

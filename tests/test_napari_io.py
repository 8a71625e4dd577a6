"""The plugin's manifest, samples, reader and writers (npe2 contributions), without a Qt viewer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from maskdiffusion.core.classes import as_class_specs  # noqa: E402
from maskdiffusion.napari import layers as L  # noqa: E402
from maskdiffusion.napari import reader, samples, writers  # noqa: E402

PLUGIN = "napari-maskdiffusion"


@pytest.fixture(autouse=True)
def plugin(npe2pm):
    """Only this plugin registered with npe2 (napari's own plugins are not needed here)."""
    from npe2 import PluginManifest

    npe2pm.register(PluginManifest.from_distribution(PLUGIN))
    return npe2pm


def test_manifest_validates_with_imports():
    out = subprocess.run([sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "valid" in out.stdout, out.stdout + out.stderr


def test_importing_the_plugin_does_not_import_torch():
    code = ("import sys, maskdiffusion.napari.widget, maskdiffusion.napari.reader, maskdiffusion.napari.writers, "
            "maskdiffusion.napari.samples; print('torch' in sys.modules, 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr


@pytest.mark.parametrize("key", ["neon_osbs", "neon_sjer"])
def test_neon_samples_open_georeferenced(key):
    viewer = ViewerModel()
    viewer.open_sample(PLUGIN, key)
    (layer,) = viewer.layers
    assert layer.rgb and layer.data.shape == (400, 400, 3)
    geo = layer.metadata["georeference"]
    assert geo["crs"].startswith("EPSG:326") and geo["transform"][0] == pytest.approx(0.1, rel=0.01)
    assert "NEON" in layer.metadata["credit"]


def test_potsdam_like_sample_has_bands_and_ground_truth():
    viewer = ViewerModel()
    viewer.open_sample(PLUGIN, "potsdam_like")
    stack, view, truth = viewer.layers
    assert stack.data.shape == (4, 512, 512) and stack.metadata["band_names"] == ["R", "G", "B", "IR"]
    info = L.describe_image(stack)
    assert info.band_axis == 0 and info.shape == (512, 512) and info.n_bands == 4
    assert view.rgb and view.data.shape == (512, 512, 3)
    assert truth.metadata["role"] == "ground truth" and len(truth.metadata["classes"]) == 6
    assert set(np.unique(truth.data)) <= set(range(1, 7))


def test_reader_keeps_georeference_of_an_isprs_tile_and_decodes_its_labels(tmp_path):
    from maskdiffusion.geo.synthetic import write_potsdam_like

    paths = write_potsdam_like(tmp_path, size=128, seed=3)
    assert reader.get_reader(str(paths["image"])) is reader.read_path
    assert reader.get_reader(str(tmp_path / "notes.txt")) is None
    with pytest.warns(UserWarning, match="EPSG:32633"):
        stack, view = reader.read_path(str(paths["image"]))
    assert stack[0].shape == (4, 128, 128) and stack[1]["metadata"]["band_names"] == ["R", "G", "B", "IR"]
    geo = stack[1]["metadata"]["georeference"]
    assert geo["crs"] == "EPSG:32633" and geo["transform"][0] == pytest.approx(0.05)
    assert view[1]["rgb"] and view[1]["name"].endswith("(RGB)")
    (labels,) = reader.read_path(str(paths["label"]))
    assert labels[2] == "labels" and labels[1]["metadata"]["kind"] == "semantic"
    assert labels[0].max() <= 6 and labels[0].min() >= 1


@pytest.fixture
def viewer_with_classes():
    viewer = ViewerModel()
    geo = {"crs": "EPSG:32617", "transform": [0.1, 0, 404211.9, 0, -0.1, 3285142.9], "source": None,
           "band_names": None}
    image = L.describe_image(viewer.add_image(np.zeros((24, 40, 3), np.uint8), rgb=True, name="ortho",
                                              metadata={"georeference": geo}))
    from maskdiffusion.core.params import SegmentParams
    from maskdiffusion.core.result import SegmentationResult

    labels = (np.arange(40)[None] * 3 // 40).repeat(24, 0).astype(np.uint8)
    classes = as_class_specs(["road", "tree", "building"])
    result = SegmentationResult(labels, classes, np.zeros(labels.shape, np.float32), np.zeros((3, 1, 1)), 16.0,
                                SegmentParams(), model="tiny")
    L.apply_layer_data(viewer, L.result_layer_data(image, {(): result}, semantic=True))
    return viewer, labels, geo


def test_class_and_semantic_geotiff_round_trip(viewer_with_classes, tmp_path):
    viewer, labels, geo = viewer_with_classes
    tree = viewer.layers["tree"]
    viewer.layers.selection = {tree}
    out = viewer.layers.save(str(tmp_path / "tree.tif"), selected=True, plugin=PLUGIN)
    assert out == [str(tmp_path / "tree.tif")]
    (back,) = reader.read_path(out[0])
    data, kwargs, kind = back
    assert kind == "labels" and kwargs["name"] == "tree" and kwargs["metadata"]["kind"] == "class"
    assert np.array_equal(data, tree.data)
    assert kwargs["metadata"]["georeference"]["crs"] == "EPSG:32617"

    semantic = viewer.layers["semantic map"]
    writers.write_geotiff(str(tmp_path / "map.tif"), semantic.data, {"metadata": semantic.metadata})
    (back,) = reader.read_path(str(tmp_path / "map.tif"))
    assert np.array_equal(back[0], labels + 1)
    assert [c["name"] for c in back[1]["metadata"]["classes"]] == ["road", "tree", "building"]


def test_isprs_rgb_and_palette_png(viewer_with_classes, tmp_path):
    import rasterio

    viewer, labels, _ = viewer_with_classes
    semantic = viewer.layers["semantic map"]
    meta = {"metadata": semantic.metadata}
    paths = writers.write_isprs_rgb(str(tmp_path / "x_label.tif"), semantic.data, meta)
    assert paths[1].endswith("x_label.classes.json")
    with rasterio.open(paths[0]) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    colors = [tuple(c["color"]) for c in json.loads(open(paths[1]).read())["classes"]]
    assert tuple(rgb[0, 0]) == colors[1] and tuple(rgb[0, -1]) == colors[3]

    paths = writers.write_palette_png(str(tmp_path / "x.png"), semantic.data, meta)
    with rasterio.open(paths[0]) as src:
        assert src.count == 1 and np.array_equal(src.read(1), labels + 1)
        assert tuple(src.colormap(1)[2][:3]) == colors[2]


def test_bundle_round_trip_and_overwrite(viewer_with_classes, tmp_path):
    viewer, labels, _ = viewer_with_classes
    class_layers = L.class_layers(viewer)
    viewer.layers.selection = set(class_layers)
    folder = tmp_path / "annotation"
    written = viewer.layers.save(str(folder), selected=True, plugin=PLUGIN)
    assert sorted(p.name for p in folder.iterdir()) == ["01_road.tif", "02_tree.tif", "03_building.tif",
                                                         "classes.json", "semantic.tif"]
    assert len(written) == 5
    info = json.loads((folder / "classes.json").read_text())
    assert info["merge_rule"] == L.MERGE_RULE and info["image"] == "ortho"
    back = reader.read_path(str(folder / "classes.json"))
    assert [kw["name"] for _, kw, _ in back] == ["road", "tree", "building"]
    for (data, _, _), layer in zip(back, class_layers):
        assert np.array_equal(data, layer.data)
    # writing again replaces the old bundle; a folder of other files is never replaced
    writers.write_bundle(str(folder), [ly.as_layer_data_tuple() for ly in class_layers[:1]])
    assert sorted(p.name for p in folder.iterdir()) == ["01_road.tif", "classes.json", "semantic.tif"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(FileExistsError, match="not a MaskDiffusion bundle"):
        writers.write_bundle(str(other), [ly.as_layer_data_tuple() for ly in class_layers])
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writers_never_overwrite_another_kind_of_file_nor_leave_partial_files(viewer_with_classes, tmp_path):
    viewer, _, _ = viewer_with_classes
    tree = viewer.layers["tree"]
    meta = {"metadata": tree.metadata}
    image = tmp_path / "ortho.tif"
    image.write_bytes((samples.SAMPLE_DIR / "neon_OSBS_029.tif").read_bytes())
    before = image.read_bytes()
    for write in (writers.write_geotiff, writers.write_isprs_rgb):
        with pytest.raises(FileExistsError, match="not overwriting"):
            write(str(image), tree.data, meta)
    assert image.read_bytes() == before
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(FileExistsError, match="a folder"):
        writers.write_geotiff(str(tmp_path / "folder.tif"), tree.data, meta)
    # same kind: replaced
    writers.write_geotiff(str(tmp_path / "t.tif"), tree.data, meta)
    writers.write_geotiff(str(tmp_path / "t.tif"), 1 - tree.data, meta)
    assert np.array_equal(reader.read_path(str(tmp_path / "t.tif"))[0][0], 1 - tree.data)
    # a stack cannot be one map: nothing is written
    with pytest.raises(ValueError, match="2-D"):
        writers.write_geotiff(str(tmp_path / "stack.tif"), np.zeros((2, 4, 4), np.uint8), meta)
    assert not (tmp_path / "stack.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

"""The plugin's manifest, samples, reader and writers (npe2 contributions), without a Qt viewer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari.components import ViewerModel  # noqa: E402

from maskdiffusion.core.classes import as_class_specs  # noqa: E402
from maskdiffusion.errors import BadInputError  # noqa: E402
from maskdiffusion.napari import layers, reader, writers  # noqa: E402
from maskdiffusion.napari.images import describe_image  # noqa: E402

PLUGIN = "napari-maskdiffusion"
SAMPLE = Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif"


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
    code = ("import sys, maskdiffusion.napari.dock, maskdiffusion.napari.reader, maskdiffusion.napari.writers, "
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
    info = describe_image(stack)
    assert info.band_axis == 0 and info.shape == (512, 512) and info.n_bands == 4
    assert view.rgb and view.data.shape == (512, 512, 3)
    assert truth.metadata["role"] == "ground truth" and len(truth.metadata["classes"]) == 6
    assert set(np.unique(truth.data)) <= set(range(1, 7))


def test_the_reader_claims_only_its_own_files(tmp_path):
    """A plain TIFF or photo goes to napari's own reader without a question."""
    photo = Path(shutil.copy(SAMPLE, tmp_path / "holiday.tif"))
    rgb_label = tmp_path / "my_label.tif"
    shutil.copy(SAMPLE, rgb_label)
    (tmp_path / "notes.txt").write_text("x")
    for path in (photo, rgb_label, tmp_path / "notes.txt", tmp_path):
        assert reader.get_reader(str(path)) is None, path
    manifest = (Path(__file__).parents[1] / "napari.yaml").read_text()
    assert '"*.tif"' not in manifest and '"*_label*' not in manifest


def test_isprs_tiles_keep_their_georeference_and_labels_decode(tmp_path):
    from maskdiffusion.geo.synthetic import write_potsdam_like

    paths = write_potsdam_like(tmp_path, size=128, seed=3)
    assert reader.get_reader(str(paths["image"])) is reader.read_path
    with pytest.warns(UserWarning, match="EPSG:32633"):
        stack, view = reader.read_path(str(paths["image"]))
    assert stack[0].shape == (4, 128, 128) and stack[1]["metadata"]["band_names"] == ["R", "G", "B", "IR"]
    geo = stack[1]["metadata"]["georeference"]
    assert geo["crs"] == "EPSG:32633" and geo["transform"][0] == pytest.approx(0.05)
    assert view[1]["rgb"] and view[1]["name"].endswith("(RGB)")
    (labels,) = reader.read_path(str(paths["label"]))
    assert labels[2] == "labels" and labels[1]["metadata"]["kind"] == "semantic"
    assert labels[0].max() <= 6 and labels[0].min() >= 1


@pytest.mark.parametrize("name", ["top_potsdam_2_10_RGB.tif", "top_potsdam_2_10_label.tif"])
def test_a_multi_page_tiff_of_a_potsdam_name_is_left_to_napari(tmp_path, name):
    """Issue 27 case 6: the reader does not claim it (it would show page 1 only); napari reads it whole."""
    from PIL import Image

    pages = [Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)) for i in range(3)]
    pages[0].save(tmp_path / name, save_all=True, append_images=pages[1:])
    assert reader.get_reader(str(tmp_path / name)) is None
    pages[0].save(tmp_path / "top_potsdam_2_11_RGB.tif")
    assert reader.get_reader(str(tmp_path / "top_potsdam_2_11_RGB.tif")) is reader.read_path


def test_label_values_the_sidecar_does_not_list_are_shown_and_warned(tmp_path):
    """Issue 27 case 7: a map holding values 1-5 whose sidecar lists 3 classes loses nothing:
    values 4 and 5 come as layers 'unknown class 4' and 'unknown class 5', with one warning."""
    from maskdiffusion.core.labels import label_values
    from maskdiffusion.geo.raster_io import write_labels, write_sidecar

    labels = (np.arange(50)[None] // 10).repeat(20, 0).astype(np.uint8) + 1  # values 1..5
    five = as_class_specs(["road", "tree", "building", "car", "water"])
    write_labels(tmp_path / "map.tif", labels, five)
    write_sidecar(tmp_path / "map.tif", {"classes": [c.to_dict() for c in five[:3]],
                                         "label_values": label_values(five[:3])})
    with pytest.warns(UserWarning, match=r"map.tif holds label value\(s\) 4, 5 that map.classes.json does not list "
                                         r"\(it has 3 classes\)"):
        out = reader.read_path(str(tmp_path / "map.classes.json"))
    names = [kwargs["name"] for _, kwargs, _ in out]
    assert names == ["road", "tree", "building", "unknown class 4", "unknown class 5"]
    for k, (data, kwargs, _) in enumerate(out, start=1):
        assert np.array_equal(data != 0, labels == k) and kwargs["metadata"]["value"] == k
    assert sum(int((data != 0).sum()) for data, _, _ in out) == labels.size, "every labelled pixel is shown"


@pytest.mark.parametrize("text, message", [
    ('{"classes": [{"name": "road"},', "map.classes.json, line 1: not valid JSON (Expecting"),
    ('["road"]', 'map.classes.json: not a result\'s sidecar (it holds no list of "classes")'),
    ('{"classes": [{"prompts": ["road"]}]}', 'map.classes.json: a class has no "name"'),
])
def test_a_corrupt_sidecar_is_refused_in_one_line(tmp_path, text, message):
    """Issue 27 case 12: the reader claims X.classes.json beside X.tif, and says in one line
    why it cannot be used (it was a bare JSONDecodeError)."""
    from maskdiffusion.geo.raster_io import write_labels

    write_labels(tmp_path / "map.tif", np.ones((8, 8), np.uint8), as_class_specs(["road"]))
    (tmp_path / "map.classes.json").write_text(text)
    assert reader.get_reader(str(tmp_path / "map.classes.json")) is reader.read_path
    with pytest.raises(BadInputError) as error:
        reader.read_path(str(tmp_path / "map.classes.json"))
    assert message in str(error.value) and "\n" not in str(error.value) and str(tmp_path) in str(error.value)


@pytest.fixture
def viewer_with_classes():
    """Class layers of a 3-class result on a georeferenced image, and their label map."""
    viewer = ViewerModel()
    geo = {"crs": "EPSG:32617", "transform": [0.1, 0, 404211.9, 0, -0.1, 3285142.9], "source": None,
           "band_names": None}
    image = describe_image(viewer.add_image(np.zeros((24, 40, 3), np.uint8), rgb=True, name="ortho",
                                            metadata={"georeference": geo}))
    from maskdiffusion.core.params import SegmentParams
    from maskdiffusion.core.result import SegmentationResult

    labels = (np.arange(40)[None] * 3 // 40).repeat(24, 0).astype(np.uint8) + 1
    classes = as_class_specs(["road", "tree", "building"])
    result = SegmentationResult(labels, classes, np.zeros(labels.shape, np.float32), np.zeros((3, 1, 1)), 16.0,
                                SegmentParams(), model="tiny")
    base = layers.base_metadata(image, result.metadata())
    for k, spec in enumerate(classes, start=1):
        data, kwargs, _ = layers.class_layer_data((labels == k).astype(np.uint8), spec, k, base)
        viewer.add_labels(data, **kwargs)
    data, kwargs, _ = layers.semantic_layer_data(labels, classes, base, image)
    viewer.add_labels(data, **kwargs)
    return viewer, labels, geo


def _read_back(path):
    from maskdiffusion.geo.raster_io import read_image

    labels, geo = read_image(path)
    return labels, geo, json.loads(Path(str(path).rsplit(".", 1)[0] + ".classes.json").read_text())


def test_class_layers_save_as_one_georeferenced_label_map(viewer_with_classes, tmp_path):
    """Selected class layers save as the run's label map: the values, classes and CRS it had."""
    viewer, labels, geo = viewer_with_classes
    viewer.layers.selection = set(layers.class_layers(viewer))
    out = viewer.layers.save(str(tmp_path / "map.tif"), selected=True, plugin=PLUGIN)
    assert out == [str(tmp_path / "map.tif"), str(tmp_path / "map.classes.json")]
    back, back_geo, sidecar = _read_back(out[0])
    assert np.array_equal(back, labels) and back_geo.crs == "EPSG:32617"
    assert sidecar["label_values"] == {"0": "unlabelled", "1": "road", "2": "tree", "3": "building"}
    (tree,) = [ly for ly in viewer.layers if ly.name == "tree"]
    viewer.layers.selection = {tree}
    out = viewer.layers.save(str(tmp_path / "tree.tif"), selected=True, plugin=PLUGIN)
    back, _, sidecar = _read_back(out[0])
    assert np.array_equal(back, tree.data) and sidecar["label_values"] == {"0": "unlabelled", "1": "tree"}


def test_a_saved_result_opens_as_its_class_layers_and_saves_back_identically(viewer_with_classes, tmp_path):
    viewer, labels, _ = viewer_with_classes
    semantic = viewer.layers["semantic map"]
    writers.write_geotiff(str(tmp_path / "map.tif"), [semantic.as_layer_data_tuple()])
    assert reader.get_reader(str(tmp_path / "map.classes.json")) is reader.read_path
    back = reader.read_path(str(tmp_path / "map.classes.json"))
    assert [kw["name"] for _, kw, _ in back] == ["road", "tree", "building"]
    assert back[0][1]["metadata"]["georeference"]["crs"] == "EPSG:32617"
    writers.write_geotiff(str(tmp_path / "again.tif"), [(d, kw, t) for d, kw, t in back])
    assert np.array_equal(_read_back(tmp_path / "again.tif")[0], labels)


def test_isprs_rgb_and_palette_png(viewer_with_classes, tmp_path):
    import rasterio

    viewer, labels, _ = viewer_with_classes
    item = [viewer.layers["semantic map"].as_layer_data_tuple()]
    paths = writers.write_isprs_rgb(str(tmp_path / "x_rgb.tif"), item)
    assert paths[1].endswith("x_rgb.classes.json")
    with rasterio.open(paths[0]) as src:
        rgb = np.moveaxis(src.read(), 0, -1)
    colors = [tuple(c["color"]) for c in json.loads(open(paths[1]).read())["classes"]]
    assert tuple(rgb[0, 0]) == colors[0] and tuple(rgb[0, -1]) == colors[2]
    paths = writers.write_palette_png(str(tmp_path / "x.png"), item)
    with rasterio.open(paths[0]) as src:
        assert src.count == 1 and np.array_equal(src.read(1), labels)
        assert tuple(src.colormap(1)[2][:3]) == colors[1] and src.colormap(1)[0][3] == 0


@pytest.mark.parametrize("write", ["write_palette_png", "write_geotiff"])
def test_a_writer_does_not_take_over_another_label_rasters_sidecar(viewer_with_classes, tmp_path, write):
    """Issue 27 case 4: saving x.png where x.tif holds other classes (or x.tif where x.png does)
    would rewrite their shared x.classes.json: refused in one line, nothing written. The same
    classes saved in both formats are allowed (the sidecar describes both)."""
    viewer, labels, _ = viewer_with_classes
    road = [viewer.layers["road"].as_layer_data_tuple()]
    all_three = [viewer.layers["semantic map"].as_layer_data_tuple()]
    first, second = ("x.tif", "x.png") if write == "write_palette_png" else ("x.png", "x.tif")
    write_first = writers.write_geotiff if first == "x.tif" else writers.write_palette_png
    write_first(str(tmp_path / first), road)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(BadInputError, match=f"is a label raster of other classes with the same sidecar name .* as "
                                            f"{second}"):
        getattr(writers, write)(str(tmp_path / second), all_three)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    getattr(writers, write)(str(tmp_path / second), road)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.classes.json", "x.png", "x.tif"]


def test_bundle_round_trip_and_overwrite(viewer_with_classes, tmp_path):
    viewer, _, _ = viewer_with_classes
    class_layers = layers.class_layers(viewer)
    folder = tmp_path / "annotation"
    written = writers.write_bundle(str(folder), [ly.as_layer_data_tuple() for ly in class_layers])
    assert sorted(p.name for p in folder.iterdir()) == ["01_road.tif", "02_tree.tif", "03_building.tif",
                                                         "classes.json", "semantic.tif"]
    assert len(written) == 5
    info = json.loads((folder / "classes.json").read_text())
    assert info["merge_rule"] == layers.MERGE_RULE and info["image_layer"] == "ortho"
    back = reader.read_path(str(folder / "classes.json"))
    assert [kw["name"] for _, kw, _ in back] == ["road", "tree", "building"]
    for (data, _, _), layer in zip(back, class_layers):
        assert np.array_equal(data, layer.data)
    writers.write_bundle(str(folder), [ly.as_layer_data_tuple() for ly in class_layers[:1]])
    assert sorted(p.name for p in folder.iterdir()) == ["01_road.tif", "classes.json", "semantic.tif"]
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"jpeg")
    with pytest.raises(BadInputError, match="not a MaskDiffusion bundle"):
        writers.write_bundle(str(other), [ly.as_layer_data_tuple() for ly in class_layers])
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_writers_never_overwrite_another_kind_of_file_nor_leave_partial_files(viewer_with_classes, tmp_path):
    viewer, _, _ = viewer_with_classes
    tree = viewer.layers["tree"]
    item = [tree.as_layer_data_tuple()]
    image = Path(shutil.copy(SAMPLE, tmp_path / "ortho.tif"))
    before = image.read_bytes()
    for write in (writers.write_geotiff, writers.write_isprs_rgb):
        with pytest.raises(BadInputError, match="not overwriting"):
            write(str(image), item)
    assert image.read_bytes() == before
    (tmp_path / "folder.tif").mkdir()
    with pytest.raises(BadInputError, match="a folder"):
        writers.write_geotiff(str(tmp_path / "folder.tif"), item)
    writers.write_geotiff(str(tmp_path / "t.tif"), item)
    flipped = (1 - tree.data, *item[0][1:])
    writers.write_geotiff(str(tmp_path / "t.tif"), [flipped])
    assert np.array_equal(_read_back(tmp_path / "t.tif")[0], 1 - tree.data)
    stack = (np.zeros((2, 4, 4), np.uint8), item[0][1], "labels")
    with pytest.raises(BadInputError, match="2-D"):
        writers.write_geotiff(str(tmp_path / "stack.tif"), [stack])
    assert not (tmp_path / "stack.tif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_every_writer_napari_offers_saves_our_layers(viewer_with_classes, tmp_path, plugin):
    from npe2 import PluginManifest

    for name in ("napari", "napari-svg"):
        plugin.register(PluginManifest.from_distribution(name))
    viewer, _, _ = viewer_with_classes
    for layer in [*layers.class_layers(viewer), viewer.layers["semantic map"]]:
        for plugin, suffix in (("napari", ".tif"), ("napari-svg", ".svg"), (PLUGIN, ".tif"), (PLUGIN, ".png")):
            out = Path(tmp_path / f"{layer.name}-{plugin}{suffix}")
            layer.save(str(out), plugin=plugin)
            assert out.stat().st_size > 0, (layer.name, plugin)

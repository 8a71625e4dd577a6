"""The ``maskdiffusion`` command line, end to end on the tiny model."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from maskdiffusion import segment
from maskdiffusion.cli import main

SAMPLE = Path(__file__).parents[1] / "sample_data" / "neon_OSBS_029.tif"


@pytest.fixture
def image(tmp_path):
    return Path(shutil.copy(SAMPLE, tmp_path / "neon.tif"))


def run(*args):
    return main([str(a) for a in args])


def test_segment_writes_a_georeferenced_class_raster_and_sidecar(image, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "seg.tif"
    code = run("segment", image, "--classes", "tree,shrub=bush|shrub,sand", "--model", tiny_model_dir, "--out", out,
               "--confidence", tmp_path / "conf.tif", "--scores", tmp_path / "scores.npy")
    assert code == 0
    with rasterio.open(image) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height) == (400, 400) and dst.dtypes[0] == "uint8"
        labels = dst.read(1)
        assert dst.nodata == 0
        cmap = dst.colormap(1)
        assert cmap[0][3] == 0 and cmap[1][:3] == (230, 25, 75) and cmap[2][:3] == (60, 180, 75)
        nodata = (src.read() == src.nodata).all(axis=0)
    assert nodata.any(), "the NEON sample has nodata pixels"
    assert (labels[nodata] == 0).all() and set(np.unique(labels[~nodata])) <= {1, 2, 3}
    meta = json.loads((tmp_path / "seg.classes.json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["tree", "shrub", "sand"]
    assert meta["classes"][1]["prompts"] == ["bush", "shrub"] and meta["classes"][0]["color"] == [230, 25, 75]
    assert meta["model"] == str(Path(tiny_model_dir).resolve()) or meta["model"].endswith("tiny-sd")
    assert meta["parameters"]["tile_size"] == 512 and "version" in meta
    assert meta["label_values"] == {"0": "unlabelled", "1": "tree", "2": "shrub", "3": "sand"}
    assert np.load(tmp_path / "scores.npy").shape == (3, 400, 400)
    with rasterio.open(tmp_path / "conf.tif") as c:
        assert c.crs is not None and c.dtypes[0] == "float32"
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"model {meta['model']} on cpu, {meta['precision']}" and meta["device"] == "cpu"
    assert "tile" in err  # the progress bar


def test_polygon_and_coco_exports(image, tmp_path, tiny_model_dir):
    import pyogrio

    assert run("segment", image, "--classes", "tree,sand", "--model", tiny_model_dir, "--out", tmp_path / "s.tif",
               "--polygons", tmp_path / "s.gpkg", "--coco", tmp_path / "s.json", "--quiet") == 0
    info = pyogrio.read_info(tmp_path / "s.gpkg")
    with rasterio.open(image) as src:
        assert info["crs"] == f"EPSG:{src.crs.to_epsg()}" and info["features"] > 0
    coco = json.loads((tmp_path / "s.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["tree", "sand"]
    assert coco["images"][0]["width"] == 400 and coco["annotations"]


def test_one_tile_run_equals_the_engine(tmp_path, tiny_model_dir):
    img = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "img.png")
    assert run("segment", tmp_path / "img.png", "--preset", "potsdam6", "--model", tiny_model_dir,
               "--tile-size", 256, "--out", tmp_path / "seg.png", "--quiet") == 0
    expected = segment(img, "preset:potsdam6", str(tiny_model_dir), tile_size=256, device="cpu")
    got = np.asarray(Image.open(tmp_path / "seg.png"))
    assert Image.open(tmp_path / "seg.png").mode == "P"
    assert np.array_equal(got, expected.labels)


@pytest.mark.parametrize("args, message", [
    (["--classes", "road,road"], "duplicate"),
    ([], "name the classes"),
    (["--classes", "road", "--tile-size", "100"], "multiple of 64"),
    (["--classes", "road", "--bands", "0,1,9"], "band 9"),
    (["--classes", "road", "--model", "/nonexistent/model"], "/nonexistent/model"),
    (["--preset", "voc"], "unknown preset"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(image, tmp_path, tiny_model_dir, capsys, args, message):
    if "--model" not in args:
        args = args + ["--model", str(tiny_model_dir)]
    code = run("segment", image, "--out", tmp_path / "seg.tif", *args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1, err
    assert not any(p.name.startswith(("seg", ".seg")) for p in tmp_path.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "seed must be between 0 and 4294967295, got -1"),
    (["--clustering", "spectral", "--spatial-weight", "nan"], "spatial weight must be a number of 0 or more, got nan"),
], ids=["seed", "spatial-weight"])
def test_seed_and_spatial_weight_are_checked_when_parsed(image, tmp_path, capsys, args, message):
    """Issue 27 case 11: refused with one line, exit 2, before the model is loaded (it does
    not exist here), not as a scikit-learn or numpy error after the run."""
    code = run("segment", image, "--unsupervised", 3, *args, "--model", tmp_path / "no-model",
               "--out", tmp_path / "seg.tif")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"maskdiffusion segment: error: {message}", err


def test_broken_and_missing_images(tmp_path, tiny_model_dir, capsys):
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 this is not a tiff")
    assert run("segment", broken, "--classes", "a,b", "--model", tiny_model_dir, "--out", tmp_path / "o.tif") == 2
    assert "broken.tif" in capsys.readouterr().err
    assert run("segment", tmp_path / "none.tif", "--classes", "a", "--out", tmp_path / "o.tif") == 2
    assert not (tmp_path / "o.tif").exists()


def test_existing_output_is_kept_unless_overwrite(image, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "seg.tif"
    out.write_bytes(b"my earlier work")
    assert run("segment", image, "--classes", "a,b", "--model", tiny_model_dir, "--out", out) == 2
    assert out.read_bytes() == b"my earlier work" and "--overwrite" in capsys.readouterr().err
    assert run("segment", image, "--classes", "a,b", "--model", tiny_model_dir, "--out", out, "--overwrite",
               "--quiet") == 0
    assert out.read_bytes()[:2] in (b"II", b"MM")


def test_a_failure_while_writing_leaves_no_partial_output(image, tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Disk full while writing the second output: one line, exit 1, and neither output is left."""
    import errno

    import maskdiffusion.geo.raster_io as rio

    def disk_full(path, *a, **k):
        with rio.atomic_output(path) as tmp:
            tmp.write_bytes(b"half a tiff")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rio, "write_raster", disk_full)
    code = run("segment", image, "--classes", "a,b", "--model", tiny_model_dir, "--out", tmp_path / "seg.tif",
               "--confidence", tmp_path / "conf.tif", "--quiet")
    err = capsys.readouterr().err.strip()
    assert code == 1 and "No space left on device" in err and "conf.tif" in err
    assert len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neon.tif"]


def test_a_bug_keeps_its_traceback(image, tmp_path, tiny_model_dir, monkeypatch):
    """An exception that is not one of ours is not dressed up as bad input: it propagates."""
    import maskdiffusion.geo.raster_io as rio

    def broken(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(rio, "write_raster", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run("segment", image, "--classes", "a,b", "--model", tiny_model_dir, "--out", tmp_path / "seg.tif",
            "--confidence", tmp_path / "conf.tif", "--quiet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neon.tif"]


def test_unsupervised_and_multiband(tmp_path, tiny_model_dir):
    from maskdiffusion.geo.synthetic import write_potsdam_like

    paths = write_potsdam_like(tmp_path, size=128)
    rgbir = next(p for p in paths.values() if str(p).endswith("_RGBIR.tif"))
    out = tmp_path / "clusters.tif"
    assert run("segment", rgbir, "--unsupervised", 3, "--bands", "3,0,1", "--model", tiny_model_dir,
               "--out", out, "--quiet") == 0
    meta = json.loads((tmp_path / "clusters.classes.json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["cluster 1", "cluster 2", "cluster 3"]
    assert meta["parameters"]["bands"] == [3, 0, 1]
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == 32633 and abs(dst.transform.a - 0.05) < 1e-9


def test_the_installed_entry_point(tmp_path, tiny_model_dir):
    exe = Path(sys.executable).with_name("maskdiffusion")
    r = subprocess.run([str(exe), "segment", str(SAMPLE), "--classes", "tree,sand", "--model", str(tiny_model_dir),
                        "--out", str(tmp_path / "s.tif"), "--tile-size", "256"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.tif").exists() and (tmp_path / "s.classes.json").exists()
    r = subprocess.run([str(exe), "segment"], capture_output=True, text=True)
    assert r.returncode == 2


def test_scribbles_are_kept_and_bad_scribbles_exit_2(image, tmp_path, tiny_model_dir, capsys):
    from maskdiffusion.geo.raster_io import read_image, write_raster

    strokes = np.zeros((400, 400), np.uint8)
    strokes[100:140, 50:300] = 2  # shrub
    strokes[300:320, 200:260] = 3  # sand
    write_raster(tmp_path / "strokes.tif", strokes)
    assert run("segment", image, "--classes", "tree,shrub,sand", "--model", tiny_model_dir, "--quiet",
               "--scribbles", tmp_path / "strokes.tif", "--out", tmp_path / "seg.tif") == 0
    labels, _ = read_image(tmp_path / "seg.tif")
    assert (labels[100:140, 50:300] == 2).all() and (labels[300:320, 200:260] == 3).all()
    with rasterio.open(image) as src:
        nodata = (src.read() == src.nodata).all(axis=0) & (strokes == 0)
    assert set(np.unique(labels[~nodata])) <= {1, 2, 3}, "the pixels without strokes are refined into classes"
    assert (labels[nodata] == 0).all(), "except those without data"
    write_raster(tmp_path / "rgb.tif", np.zeros((3, 400, 400), np.uint8))
    assert run("segment", image, "--classes", "tree,shrub", "--model", tiny_model_dir, "--quiet",
               "--scribbles", tmp_path / "rgb.tif", "--out", tmp_path / "seg2.tif") == 2
    assert "one-band" in capsys.readouterr().err and not (tmp_path / "seg2.tif").exists()


def test_unsupervised_zero_says_what_k_must_be(image, tmp_path, capsys):
    assert run("segment", image, "--unsupervised", 0, "--out", tmp_path / "seg.tif") == 2
    err = capsys.readouterr().err.strip()
    assert err == "maskdiffusion segment: error: unsupervised K must be between 2 and 256, got 0"


def test_fp16_on_a_cpu_says_so_in_one_line(image, tmp_path, capsys):
    assert run("segment", image, "--classes", "a,b", "--dtype", "fp16", "--device", "cpu",
               "--model", tmp_path / "no-model", "--out", tmp_path / "seg.tif") == 2
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: fp16 on a CPU runs about 3x slower than bf16 or fp32; --dtype auto picks bf16 where "
                     "the CPU has it, else fp32"]


def test_the_bands_used_are_said_and_recorded(tmp_path, tiny_model_dir, capsys):
    """A 2-band image is seen as band 0 in gray: one line says so, the sidecar records it."""
    from maskdiffusion.geo.raster_io import write_raster

    two = write_raster(tmp_path / "two.tif", np.random.default_rng(0).integers(0, 4000, (2, 128, 128), np.uint16))
    assert run("segment", two, "--classes", "a,b", "--model", tiny_model_dir, "--quiet", "--tile-size", 128,
               "--out", tmp_path / "seg.tif") == 0
    assert capsys.readouterr().err.splitlines() == [
        "note: two.tif has 2 bands; using band 0 as gray (choose with --bands)"]
    assert json.loads((tmp_path / "seg.classes.json").read_text())["bands_used"] == [0, 0, 0]
    assert run("segment", two, "--classes", "a,b", "--model", tiny_model_dir, "--quiet", "--tile-size", 128,
               "--bands", "1", "--out", tmp_path / "seg1.tif") == 0
    assert capsys.readouterr().err == ""
    assert json.loads((tmp_path / "seg1.classes.json").read_text())["bands_used"] == [1, 1, 1]


def test_a_65_band_image_is_segmented_on_the_bands_chosen(tmp_path, tiny_model_dir, capsys):
    """Issue 27 case 13: --bands is applied before the channels are counted; without it, the
    message asks for a band choice and does not blame the axis order of a file read bands last."""
    from maskdiffusion.geo.raster_io import write_raster

    many = write_raster(tmp_path / "many.tif", np.random.default_rng(0).integers(0, 256, (65, 128, 128), np.uint8))
    assert run("segment", many, "--classes", "a,b", "--model", tiny_model_dir, "--quiet", "--tile-size", 128,
               "--bands", "30,20,10", "--out", tmp_path / "seg.tif") == 0
    assert json.loads((tmp_path / "seg.classes.json").read_text())["bands_used"] == [30, 20, 10]
    capsys.readouterr()
    assert run("segment", many, "--classes", "a,b", "--model", tiny_model_dir, "--quiet",
               "--out", tmp_path / "seg2.tif") == 2
    assert capsys.readouterr().err.strip() == (
        "maskdiffusion segment: error: image of shape (128, 128, 65) has 65 bands: choose the 1 or 3 to use "
        "(--bands, e.g. 0,1,2)")
    assert not (tmp_path / "seg2.tif").exists()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_a_multi_page_tiff_is_refused_saying_how_to_take_one_page(tmp_path, capsys, mode):
    """Issue 27 case 5: three gray or RGB pages are not segmented on page 1 silently: one line,
    exit 2, before the model is loaded, naming how to save one page on its own."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 256, (64, 80, 3) if mode == "RGB" else (64, 80), np.uint8))
             for _ in range(3)]
    stack = tmp_path / "stack.tif"
    pages[0].save(stack, save_all=True, append_images=pages[1:])
    assert run("segment", stack, "--classes", "a,b", "--model", tmp_path / "no-model",
               "--out", tmp_path / "seg.tif") == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdiffusion segment: error: {stack} holds 3 images (a multi-page TIFF) and only one image a file is read: "
        f"save the page you want on its own, e.g. rio convert 'GTIFF_DIR:2:{stack}' page2.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.tif"]


def test_a_png_beside_a_tif_of_the_same_name_does_not_take_over_its_sidecar(tmp_path, capsys):
    """Issue 27 case 4: x.tif and x.png would share x.classes.json, and x.tif would be read with
    the PNG's classes: refused whatever --overwrite says, one line, exit 2, before the model loads."""
    from maskdiffusion.core.classes import as_class_specs
    from maskdiffusion.geo.raster_io import read_class_names, write_labels, write_sidecar

    image = Path(shutil.copy(SAMPLE, tmp_path / "neon.tif"))
    classes = as_class_specs("a,b")
    write_labels(tmp_path / "x.tif", np.ones((400, 400), np.uint8), classes)
    write_sidecar(tmp_path / "x.tif", {"classes": [c.to_dict() for c in classes]})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert run("segment", image, "--classes", "c,d,e", "--model", tmp_path / "no-model", "--out", tmp_path / "x.png",
               "--overwrite") == 2
    assert capsys.readouterr().err.strip() == (
        f"maskdiffusion segment: error: {tmp_path / 'x.tif'} is a label raster of other classes with the same "
        "sidecar name (x.classes.json) as x.png: writing x.png would give it these classes; choose another name "
        "for x.png")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_class_names(tmp_path / "x.tif") == ["a", "b"]


def test_the_closing_line_counts_classes_without_copying_the_map():
    """Issue 27 case 8: the summary line of a 12000² run made an int64 copy of the label map
    (8 bytes a pixel, 1.15 GB); counting now takes less than the map's own bytes."""
    import tracemalloc
    from types import SimpleNamespace

    from maskdiffusion.cli.segment import _class_fractions
    from maskdiffusion.core.classes import as_class_specs

    labels = np.zeros((2000, 3000), np.uint8)
    labels[:500] = 1
    labels[500:1500, :1500] = 3
    result = SimpleNamespace(labels=labels, classes=as_class_specs("a,b,c"))
    tracemalloc.start()
    try:
        text = _class_fractions(result)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert text == "a 25.0%, c 25.0%"
    assert peak < labels.nbytes / 2, f"{peak / 2**20:.1f} MB to count a {labels.nbytes / 2**20:.1f} MB map"


def test_a_warning_is_one_line_on_stderr(tmp_path):
    """A Python warning (here: a Potsdam tile without CRS) reads as one line, not file:line: source."""
    from cli_process import run_cli
    from maskdiffusion.geo.synthetic import write_potsdam_like

    tile = next(p for p in write_potsdam_like(tmp_path, size=64).values() if str(p).endswith("_RGBIR.tif"))
    r = run_cli("segment", tile, "--classes", "a,b", "--model", tmp_path / "no-model", "--out", tmp_path / "s.tif")
    warned = [line for line in r.stderr.splitlines() if ": warning: " in line or "Warning" in line]
    assert warned == [f"maskdiffusion segment: warning: {tile.name}: no CRS in the file or beside it; ISPRS Potsdam "
                      "tile name, assuming EPSG:32633 (UTM 33N)"], r.stderr
    assert "UserWarning" not in r.stderr and "read_input" not in r.stderr

"""The OpenVINO backend (``docs/algorithm.md`` §5) on the tiny model: it converts once, agrees
with PyTorch and with the equations, its IR cache is reused by later runs and by batch workers
together, and every bad input gives one clear message.

The module converts into a cache folder of its own (set before anything runs, so the batch
workers it starts use it too); the rest of the suite keeps ``auto`` on PyTorch (conftest).
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from maskdiffusion import cli, segment
from maskdiffusion.engine import drain, iter_segment
from maskdiffusion.geo.synthetic import make_potsdam_like_tile, write_potsdam_like
from maskdiffusion.model import openvino_backend
from maskdiffusion.model.cache_folder import CACHE_ENV
from maskdiffusion.model.ir_cache import IRCache
from maskdiffusion.model.loading import clear_model_cache, load_model
from maskdiffusion.model.openvino_backend import CONVERSIONS, EXTRA, BackendError, use_openvino
from reference_maskdiffusion import reference_segment
from tiny_taesd import build_tiny_taesd

pytest.importorskip("openvino")

TILE, OVERLAP = 128, 32
CLASSES = "road,building,tree"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("openvino-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def sd(tiny_model_dir, cache_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def image():
    return np.ascontiguousarray(make_potsdam_like_tile(256, seed=3)[0][..., :3])


@pytest.fixture(scope="module")
def image_png(image, tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "tile.png"
    Image.fromarray(image).save(path)
    return path


def _run(image, model, **params):
    """A run's result, its conversions and the messages it gave while loading."""
    before, steps = CONVERSIONS["count"], []
    result = drain(iter_segment(image, CLASSES, model, tile_size=TILE, overlap=OVERLAP, return_scores=True,
                                **params), steps.append)
    messages = [s.message for s in steps if s.stage == "load"]
    return SimpleNamespace(result=result, conversions=CONVERSIONS["count"] - before, messages=messages)


@pytest.fixture(scope="module")
def first(sd, image):
    """The first run through OpenVINO: it converts both parts into the empty cache."""
    return _run(image, sd, backend="openvino")


@pytest.fixture(scope="module")
def reference(sd, image):
    return segment(image, CLASSES, sd, tile_size=TILE, overlap=OVERLAP, return_scores=True, backend="torch")


def _agreement(a, b) -> float:
    """The share of equal labels: OpenVINO compiles the same IR to the same labels up to a few
    pixels where random weights leave two classes tied within 1e-7."""
    return float((a == b).mean())


def _entries(cache_dir):
    folder = cache_dir / "openvino"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _fresh_model(tiny_model_dir):
    """The same weights as a new model object: nothing converted is kept in memory for it."""
    clear_model_cache()
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


def test_openvino_agrees_with_pytorch(first, reference):
    ov = first.result
    assert (ov.backend, reference.backend) == ("openvino", "torch")
    assert _agreement(ov.labels, reference.labels) >= 0.999
    assert np.allclose(ov.scores, reference.scores, rtol=1e-3, atol=1e-4)
    assert np.allclose(ov.attention, reference.attention, rtol=1e-3, atol=1e-5)
    assert ov.metadata()["backend"] == "openvino" and ov.metadata()["precision"] == "fp32"


def test_the_first_conversion_says_it_happens_once_and_keeps_fp32(first, cache_dir):
    assert first.conversions == 2
    converting = [m for m in first.messages if "converting" in m]
    assert converting[0].startswith("OpenVINO: converting the VAE encoder for 128x128 tiles (1 of 2)")
    assert converting[1].startswith("OpenVINO: converting the UNet for 128x128 tiles (2 of 2)")
    assert all("happens once" in m and str(cache_dir) in m for m in converting)
    entries = _entries(cache_dir)
    assert [e.split("-")[0] for e in entries] == ["encoder", "unet"]
    for entry in entries:
        xml = (cache_dir / "openvino" / entry / "model.xml").read_text()
        assert 'element_type="f16"' not in xml, "weights kept in fp32 (compress_to_fp16=False)"
    unet_xml = (cache_dir / "openvino" / entries[1] / "model.xml").read_text()
    assert unet_xml.count('type="Exp"') == 6, "the six captured maps are computed explicitly"


def test_one_tile_through_openvino_agrees_with_the_equations(sd, first, image):
    tile = image[:TILE, :TILE]
    names = CLASSES.split(",")
    result = segment(tile, CLASSES, sd, tile_size=TILE, backend="openvino")
    expected, maps = reference_segment(tile, names, sd.tokenizer, sd.text_encoder, sd.vae, sd.unet)
    assert result.backend == "openvino"
    assert (result.labels == expected + 1).mean() >= 0.99
    assert np.allclose(result.attention, maps, rtol=1e-3, atol=1e-5)


def test_a_second_run_reads_the_cache(tiny_model_dir, first, image_png, tmp_path, capsys):
    _fresh_model(tiny_model_dir)
    before = CONVERSIONS["count"]
    out = tmp_path / "seg.tif"
    code = cli.main(["segment", str(image_png), "--classes", CLASSES, "--model", str(tiny_model_dir),
                     "--tile-size", str(TILE), "--overlap", str(OVERLAP), "--backend", "openvino", "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 0 and CONVERSIONS["count"] == before and "converting" not in stderr
    assert json.loads(out.with_name("seg.classes.json").read_text())["backend"] == "openvino"
    from maskdiffusion.geo.raster_io import read_image

    assert _agreement(read_image(out)[0], first.result.labels) >= 0.999


def test_a_damaged_cache_entry_is_converted_again(tiny_model_dir, first, image, cache_dir):
    encoder = cache_dir / "openvino" / _entries(cache_dir)[0]
    (encoder / "model.xml").write_text("<net>not a model")
    again = _run(image, _fresh_model(tiny_model_dir), backend="openvino")
    assert again.conversions == 1 and any("converting the VAE encoder" in m for m in again.messages)
    assert _agreement(again.result.labels, first.result.labels) >= 0.999
    assert IRCache(cache_dir / "openvino").read(encoder.name, _manifest(encoder)) is not None


def _manifest(entry):
    stored = json.loads((entry / "manifest.json").read_text())
    stored.pop("sizes")
    return stored


def _trivial_model():
    import openvino
    import openvino.opset13 as ops

    x = ops.parameter([1, 4], np.float32, name="x")
    weights = ops.constant(np.arange(16, dtype=np.float32).reshape(4, 4))
    return openvino.Model([ops.relu(ops.matmul(x, weights, False, False))], [x], "trivial")


@pytest.mark.parametrize("damage", ["garbage xml", "truncated weights", "stale manifest", "no manifest",
                                    "no weights"])
def test_ir_cache_entries_that_do_not_read_back_are_removed(damage, tmp_path):
    cache = IRCache(tmp_path)
    manifest = {"part": "trivial", "versions": {"openvino": "x"}, "input": [1, 4]}
    cache.write("trivial-1", manifest, _trivial_model())
    assert cache.read("trivial-1", manifest) is not None
    entry = tmp_path / "trivial-1"
    if damage == "garbage xml":
        (entry / "model.xml").write_text("<net")
    elif damage == "truncated weights":
        (entry / "model.bin").write_bytes((entry / "model.bin").read_bytes()[:-1])
    elif damage == "no manifest":
        (entry / "manifest.json").unlink()
    elif damage == "no weights":
        (entry / "model.bin").unlink()
    else:
        manifest = {**manifest, "versions": {"openvino": "y"}}
    assert cache.read("trivial-1", manifest) is None
    assert not entry.exists(), "a bad entry is removed, to be converted again"


def test_entries_of_older_versions_are_removed_when_a_newer_one_is_written(tmp_path):
    cache = IRCache(tmp_path)
    old = {"part": "trivial", "versions": {"maskdiffusion": "0.1"}, "input": [1, 4]}
    other_shape = {**old, "input": [1, 8]}
    cache.write("trivial-old", old, _trivial_model())
    cache.write("trivial-8", other_shape, _trivial_model())
    cache.write("trivial-new", {**old, "versions": {"maskdiffusion": "0.2"}}, _trivial_model())
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["trivial-8", "trivial-new"]


def test_a_failed_conversion_auto_warns_once_and_runs_pytorch_openvino_exits_2(
        tiny_model_dir, reference, image, image_png, tmp_path, monkeypatch, capsys):
    def unusual(module, example):
        raise RuntimeError("Conversion of aten::unusual_op is not supported")

    monkeypatch.setattr(openvino_backend, "_convert", unusual)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(openvino_backend.AUTO_ENV)
    sd = _fresh_model(tiny_model_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = segment(image, CLASSES, sd, tile_size=TILE, overlap=OVERLAP)
    said = [str(w.message) for w in caught]
    assert len(said) == 1 and "OpenVINO could not convert this model" in said[0] and "unusual_op" in said[0]
    assert result.backend == "torch" and np.array_equal(result.labels, reference.labels)
    out = tmp_path / "seg.tif"
    code = cli.main(["segment", str(image_png), "--classes", CLASSES, "--model", str(tiny_model_dir),
                     "--tile-size", str(TILE), "--backend", "openvino", "--out", str(out), "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1
    assert "OpenVINO could not convert this model" in stderr and "aten::unusual_op" in stderr
    assert not out.exists()
    clear_model_cache()


def test_openvino_not_installed(sd, image, image_png, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    out = tmp_path / "seg.tif"
    code = cli.main(["segment", str(image_png), "--classes", CLASSES, "--model", str(sd.source),
                     "--backend", "openvino", "--out", str(out), "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and EXTRA in stderr and not out.exists()
    monkeypatch.delenv(openvino_backend.AUTO_ENV)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert segment(image[:64, :64], CLASSES, sd, tile_size=64, overlap=0).backend == "torch"


def test_which_backend_auto_takes(monkeypatch):
    def model(device="cpu", dtype=torch.float32):
        return SimpleNamespace(device=torch.device(device), dtype=dtype, precision=str(dtype))

    monkeypatch.delenv(openvino_backend.AUTO_ENV)
    assert use_openvino("auto", model()) and use_openvino("auto", model(dtype=torch.bfloat16))
    assert not use_openvino("auto", model(dtype=torch.float16)) and not use_openvino("auto", model("meta"))
    assert not use_openvino("torch", model())
    monkeypatch.setenv(openvino_backend.AUTO_ENV, "0")
    assert not use_openvino("auto", model()) and use_openvino("openvino", model())
    with pytest.raises(BackendError, match="runs on a CPU"):
        use_openvino("openvino", model("meta"))
    with pytest.raises(BackendError, match="fp32 or bf16"):
        use_openvino("openvino", model(dtype=torch.float16))


def test_taesd_through_openvino_with_an_unwritable_cache_folder(sd, first, image, tmp_path, monkeypatch):
    """TAESD's encoder is converted (the UNet compiled for ``first`` is reused from memory),
    kept in memory only, and the folder that cannot be written is named once."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    taesd = str(build_tiny_taesd(tmp_path / "taesd", seed=3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [_run(image, sd, backend="openvino", encoder=taesd) for _ in range(2)]
    said = [str(w.message) for w in caught if "cannot be written" in str(w.message)]
    assert len(said) == 1 and str(blocker / "cache") in said[0]
    assert [r.conversions for r in runs] == [1, 0], "TAESD's encoder alone, once"
    assert any(m.startswith("OpenVINO: converting the TAESD encoder") and "kept in memory only" in m
               for m in runs[0].messages)
    pt = segment(image, CLASSES, sd, tile_size=TILE, overlap=OVERLAP, backend="torch", encoder=taesd)
    assert runs[0].result.backend == "openvino" and _agreement(runs[0].result.labels, pt.labels) >= 0.999
    clear_model_cache()


def test_a_bf16_model_converts_from_its_exact_fp32_upcast(sd, tiny_model_dir, image):
    """OpenVINO computes NaN from a graph traced in bf16: the bf16 weights are upcast (exactly)
    for the conversion and the bf16 precision hint is left to OpenVINO (bf16 where the CPU has
    it; this CPU computes fp32 on the bf16 weights)."""
    bf16 = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    tile = image[:64, :64]
    early = {"cross_attention_layers": ("down_blocks.1",),  # a UNet stopped early: a quicker conversion
             "feature_layers": ("down_blocks.2.resnets.0", "down_blocks.1.resnets.1")}
    ov = segment(tile, CLASSES, bf16, tile_size=64, overlap=0, backend="openvino", **early)
    fp32 = segment(tile, CLASSES, sd, tile_size=64, overlap=0, backend="torch", **early)
    assert (ov.backend, ov.precision) == ("openvino", "bf16")
    assert _agreement(ov.labels, fp32.labels) >= 0.95, "bf16 weights, near the fp32 labels"
    clear_model_cache()


def test_batch_workers_share_one_cache(tiny_model_dir, first, cache_dir, tmp_path):
    """Two worker processes start on tiles at once: the part not yet converted is converted by
    one of them while the other waits for it, never by both."""
    from distributed import Client, LocalCluster

    tiles = tmp_path / "tiles"
    for i in range(4):
        write_potsdam_like(tiles, f"top_potsdam_3_{10 + i}", size=TILE, seed=i)
    taesd = build_tiny_taesd(tmp_path / "taesd", seed=7)  # weights no entry was made from
    before = set(_entries(cache_dir))

    def conversions():
        from maskdiffusion.model.openvino_backend import CONVERSIONS

        return CONVERSIONS["count"]

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        code = cli.main(["batch", str(tiles / "*_RGBIR.tif"), "--out-dir", str(tmp_path / "out"), "--classes",
                         CLASSES, "--model", str(tiny_model_dir), "--tile-size", str(TILE), "--backend", "openvino",
                         "--encoder", str(taesd), "--scheduler", cluster.scheduler_address, "--quiet"])
        per_worker = client.run(conversions)
    assert code == 0
    status = json.loads((tmp_path / "out" / "batch_status.json").read_text())["tiles"]
    assert len({r["pid"] for r in status.values()}) == 2, "both workers took tiles"
    new = set(_entries(cache_dir)) - before
    assert len(new) == 1 and next(iter(new)).startswith("encoder-")
    assert sum(per_worker.values()) == 1, per_worker
    sidecars = sorted((tmp_path / "out").glob("*.classes.json"))
    assert len(sidecars) == 4 and {json.loads(s.read_text())["backend"] for s in sidecars} == {"openvino"}

"""``--encoder``: the paper's VAE or TAESD (``docs/algorithm.md`` §5), on the tiny models.

TAESD is checked against its own configuration and the installed diffusers: it is fed x in
[-1, 1] (its encoder maps that to the [0, 1] it was trained on) and its latents are multiplied
by its config's scaling factor (1.0 for TAESD: they come out on the UNet's scale).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskdiffusion import cli, segment
from maskdiffusion.core.params import ParamsError, SegmentParams
from maskdiffusion.core.tokens import layout_prompts
from maskdiffusion.model.encoders import TAESD_HUB_ID, load_taesd
from maskdiffusion.model.forward import TileRunner
from maskdiffusion.model.loading import ModelFormatError, ModelNotFoundError, clear_model_cache, load_model
from tiny_taesd import build_tiny_taesd


@pytest.fixture(scope="module")
def sd(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory):
    return build_tiny_taesd(tmp_path_factory.mktemp("taesd") / "tiny-taesd")


@pytest.fixture
def tile():
    return np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)


def _runner(sd, encoder: str) -> TileRunner:
    params = SegmentParams(encoder=encoder, tile_size=64, overlap=0)
    return TileRunner(sd, params, layout_prompts([], sd.tokenizer).input_ids)


def test_taesd_sees_its_input_range_and_its_scale(sd, taesd_dir, tile):
    from diffusers import AutoencoderTiny

    taesd = AutoencoderTiny.from_pretrained(taesd_dir)
    assert taesd.config.scaling_factor == 1.0, "TAESD's latents are already on the UNet's scale"
    z = _runner(sd, str(taesd_dir)).latents(tile)
    unit = torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 255  # what TAESD was trained on
    with torch.inference_mode():
        expected = taesd.encoder.layers(unit)
    assert z.shape == (1, 4, 8, 16)
    assert torch.allclose(z, expected, atol=1e-5), "x in [-1, 1] reaches TAESD's layers as [0, 1]"


def test_taesd_latents_are_multiplied_by_its_configured_scale(sd, taesd_dir, tile, tmp_path):
    config = json.loads((taesd_dir / "config.json").read_text())
    scaled = tmp_path / "taesd-scaled"
    scaled.mkdir()
    (scaled / "config.json").write_text(json.dumps({**config, "scaling_factor": 2.0}))
    for f in taesd_dir.iterdir():
        if f.name != "config.json":
            (scaled / f.name).symlink_to(f)
    z1, z2 = _runner(sd, str(taesd_dir)).latents(tile), _runner(sd, str(scaled)).latents(tile)
    assert torch.allclose(z2, 2 * z1, atol=1e-5)


def test_vae_encoder_is_the_papers(sd, tile):
    x = torch.from_numpy(tile).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        expected = sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor
        z = _runner(sd, "vae").latents(tile)
    assert torch.allclose(z, expected, atol=1e-6)


def test_segment_with_taesd_records_the_encoder(sd, taesd_dir, potsdam_tile, tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    result = segment(image, "road,tree", sd, tile_size=128, overlap=32, encoder=str(taesd_dir))
    vae = segment(image, "road,tree", sd, tile_size=128, overlap=32)
    assert result.labels.shape == (128, 192) and set(np.unique(result.labels)) <= {1, 2}
    assert result.metadata()["parameters"]["encoder"] == str(taesd_dir)
    assert vae.metadata()["parameters"]["encoder"] == "vae"
    assert not np.array_equal(result.confidence, vae.confidence), "another encoder, other latents"
    out = tmp_path / "seg.tif"
    code = cli.main(["segment", str(potsdam_tile["image"]), "--classes", "road,tree", "--model",
                     str(sd.source), "--tile-size", "128", "--encoder", str(taesd_dir), "--out", str(out), "--quiet"])
    assert code == 0
    sidecar = json.loads(out.with_name("seg.classes.json").read_text())
    assert sidecar["parameters"]["encoder"] == str(taesd_dir)


@pytest.mark.parametrize("layout", ["autoencoder", "encoder", "taesd_encoder.pth"])
def test_taesd_from_a_single_file(layout, tmp_path):
    """A full AutoencoderTiny's weights, its encoder's, or TAESD's own ``taesd_encoder`` layout."""
    from diffusers import AutoencoderTiny
    from safetensors.torch import save_file

    torch.manual_seed(1)
    source = AutoencoderTiny()  # TAESD's configuration, random weights
    state = {"autoencoder": source.state_dict(), "encoder": source.encoder.state_dict(),
             "taesd_encoder.pth": source.encoder.layers.state_dict()}[layout]
    path = tmp_path / "weights.safetensors"
    if layout.endswith(".pth"):
        path = tmp_path / layout
        torch.save(state, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded = load_taesd(str(path), torch.device("cpu"), torch.float32)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(loaded.encoder.state_dict()[key], value), key
    clear_model_cache()


def test_a_file_that_is_not_taesd_says_so(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_up.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelFormatError, match="holds no TAESD encoder weights"):
        load_taesd(str(path), torch.device("cpu"), torch.float32)


def test_taesd_not_reachable_is_the_one_line_missing_model_message(sd, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFoundError) as err:
        load_taesd("taesd", torch.device("cpu"), torch.float32)
    message = str(err.value)
    assert message.startswith(f"Model '{TAESD_HUB_ID}' is neither a local path nor in the Hugging Face cache "
                              f"({tmp_path / 'hub'}), and downloads are off (HF_HUB_OFFLINE=1).")
    assert "--encoder /path/to/taesd" in message and len(message.splitlines()) == 1
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    code = cli.main(["segment", str(image), "--classes", "a,b", "--model", str(sd.source), "--encoder", "taesd",
                     "--out", str(tmp_path / "seg.tif"), "--quiet"])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.count("\n") == 1 and TAESD_HUB_ID in stderr
    assert not (tmp_path / "seg.tif").exists()


def test_encoder_that_names_nothing(sd, tmp_path):
    with pytest.raises(ModelNotFoundError, match="Encoder 'tasd' is not vae, taesd, an existing TAESD folder"):
        load_taesd("tasd", torch.device("cpu"), torch.float32)
    with pytest.raises(ModelFormatError, match="config.json is missing"):
        load_taesd(str(tmp_path), torch.device("cpu"), torch.float32)
    with pytest.raises(ParamsError, match="encoder must be"):
        SegmentParams(encoder=" ")

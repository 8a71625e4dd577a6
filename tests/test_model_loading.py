"""Model loading (``docs/algorithm.md`` §5): sources, single files, devices, dtypes, the cache, clear errors.

Everything runs offline on the tiny random model; single files are made from it with the
reverse key mapping in ``ldm_layout``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from ldm_layout import original_checkpoint
from maskdiffusion.core.params import DEFAULT_MODEL
from maskdiffusion.errors import BadInputError
from maskdiffusion.model import loading, single_file, sources
from maskdiffusion.model.loading import (
    DeviceError,
    DTypeError,
    ModelFormatError,
    ModelNotFoundError,
    SDModel,
    clear_model_cache,
    cpu_has_native_bf16,
    load_model,
    resolve_device,
    resolve_dtype,
)
from maskdiffusion.model.sources import hub_reachable, is_random_source, resolve_source

HAS_ACCELERATOR = torch.cuda.is_available() or torch.backends.mps.is_available()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu", dtype="fp32")


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_module_import_does_not_import_torch():
    code = "import sys, maskdiffusion.model.loading; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    code = "import sys, maskdiffusion.model.loading; assert 'huggingface_hub' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_folder_loads_frozen_components(tiny, tiny_model_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(tiny, SDModel)
    assert isinstance(tiny.tokenizer, CLIPTokenizer)
    assert isinstance(tiny.text_encoder, CLIPTextModel)
    assert isinstance(tiny.vae, AutoencoderKL)
    assert isinstance(tiny.unet, UNet2DConditionModel)
    assert tiny.source == str(tiny_model_dir.resolve())
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32 and tiny.precision == "fp32"
    for module in (tiny.text_encoder, tiny.vae, tiny.unet):
        assert not module.training
        assert all(not p.requires_grad and p.dtype == torch.float32 and p.device.type == "cpu"
                   for p in module.parameters())
    assert tiny.scheduler_config["beta_schedule"] == "scaled_linear"
    assert tiny.tokenizer("a tree").input_ids == [49406, 320, 2677, 49407]


def test_cache_per_source_device_and_dtype(tiny, tiny_model_dir):
    assert load_model(str(tiny_model_dir), device="cpu", dtype="fp32") is tiny
    half = load_model(tiny_model_dir, device="cpu", dtype="fp16")
    assert half is not tiny and half.dtype == torch.float16 and half.precision == "fp16"
    assert next(half.unet.parameters()).dtype == torch.float16
    assert load_model(tiny_model_dir, device="cpu", dtype="float16") is half
    clear_model_cache()
    assert load_model(tiny_model_dir, device="cpu", dtype="fp32") is not tiny


@pytest.mark.skipif(HAS_ACCELERATOR, reason="auto picks the accelerator here")
def test_auto_device_is_cpu_without_accelerator(tiny, tiny_model_dir):
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    assert load_model(tiny_model_dir, dtype="fp32") is tiny
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("name", ["gpu", "tpu:0", "cuda:x"])
def test_unknown_device_is_a_clear_error(name):
    with pytest.raises(DeviceError, match="device") as err:
        resolve_device(name)
    assert isinstance(err.value, BadInputError) and len(str(err.value).splitlines()) == 1


def test_dtypes():
    assert resolve_dtype("fp16", "cpu") == resolve_dtype("float16", "cpu") == torch.float16
    assert resolve_dtype("fp32", "cpu") == resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    with pytest.raises(DTypeError, match="Unknown dtype") as err:
        resolve_dtype("int8", "cpu")
    assert isinstance(err.value, BadInputError)


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_on_cpu_is_bf16_where_native(native, monkeypatch):
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == resolve_dtype(None, "cpu") == expected
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_cpu_bf16_capability_comes_from_torch():
    found = torch.cpu.get_capabilities()
    assert cpu_has_native_bf16() == bool(found.get("avx512_bf16") or found.get("amx_bf16"))


def test_bf16_model_on_cpu(tiny_model_dir):
    sd = load_model(tiny_model_dir, device="cpu", dtype="bf16")
    assert sd.dtype == torch.bfloat16 and sd.precision == "bf16"
    assert next(sd.unet.parameters()).dtype == next(sd.vae.parameters()).dtype == torch.bfloat16
    assert next(sd.text_encoder.parameters()).dtype == torch.float32, "the text encoder runs once: in fp32"


def test_missing_path(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        load_model(tmp_path / "nowhere", device="cpu")
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "--model /path/to/stable-diffusion-v1-4" in message


@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return tmp_path / "hf" / "hub"


@pytest.fixture
def closed_hub(monkeypatch, no_proxy):
    """Downloads allowed, but the Hub is a closed port on this machine: refused at once."""
    from huggingface_hub import constants

    endpoint = "http://127.0.0.1:9"
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    return endpoint


def test_missing_hub_id_offline_names_id_and_cache(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sources, "hub_reachable", lambda *a, **k: pytest.fail("offline: the Hub is not probed"))
    with pytest.raises(ModelNotFoundError) as err:
        load_model(None, device="cpu")
    message = str(err.value)
    assert DEFAULT_MODEL in message
    assert str(empty_hub_cache) in message
    assert "HF_HUB_OFFLINE=1" in message and "--model /path/to/stable-diffusion-v1-4" in message
    assert err.value.__cause__ is not None
    assert len(message.splitlines()) == 1


def test_unreachable_hub_fails_like_offline(empty_hub_cache, closed_hub):
    with pytest.raises(ModelNotFoundError) as err:
        load_model("someone/not-cached", device="cpu")
    message = str(err.value)
    assert "'someone/not-cached'" in message and str(empty_hub_cache) in message
    assert f"(the Hugging Face Hub could not be reached at {closed_hub})" in message
    assert "--model /path/to/stable-diffusion-v1-4" in message and len(message.splitlines()) == 1


def test_hub_reachable_is_a_plain_connection(no_proxy):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert hub_reachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2)
    assert not hub_reachable("http://127.0.0.1:9", timeout=2)


def test_hub_id_loads_from_the_offline_cache(tiny, tiny_model_dir, tmp_path, monkeypatch):
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-sd"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    cached = load_model("someone/tiny-sd", device="cpu", dtype="fp32")
    assert cached.source == "someone/tiny-sd"
    _same_weights(cached.unet, tiny.unet)
    shutil.rmtree(repo / "snapshots" / commit / "unet")
    with pytest.raises(ModelFormatError, match="Could not load the unet of 'someone/tiny-sd'"):
        load_model("someone/tiny-sd", device="cpu", dtype="bf16")


def test_folder_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelFormatError, match="model_index.json is missing"):
        load_model(tmp_path, device="cpu")
    (tmp_path / "sd-v1-4.safetensors").write_bytes(b"")
    with pytest.raises(ModelNotFoundError, match="sd-v1-4.safetensors: pass that file itself"):
        load_model(tmp_path, device="cpu")


def test_folder_that_is_not_stable_diffusion(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}')
    with pytest.raises(ModelFormatError, match="lists no vae, text_encoder, tokenizer"):
        load_model(tmp_path, device="cpu")


def _text_file(path):
    path.write_text("model: stable-diffusion-v1-4\nthis is a text file\n")


def _png_file(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated_safetensors(path, unet):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(("name", "write"), [
    ("notes.ckpt", _text_file),
    ("picture.ckpt", _png_file),
    ("x.safetensors", _random_bytes),
    ("half.safetensors", "truncated"),
])
def test_a_file_that_is_not_a_checkpoint(name, write, tmp_path, tiny):
    path = tmp_path / name
    if write == "truncated":
        _truncated_safetensors(path, tiny.unet)
    else:
        write(path)
    with pytest.raises(ModelFormatError) as err:
        load_model(path, device="cpu")
    resolved = path.resolve()
    assert str(err.value) == (
        f"'{resolved}' is not a Stable Diffusion checkpoint (not a readable .safetensors/.ckpt file)"
    )
    assert isinstance(err.value, BadInputError) and err.value.__cause__ is not None


class _Callback:
    """Stands for the training objects some .ckpt files pickle beside their weights."""


def test_ckpt_with_python_objects_is_not_unpickled(tiny, tmp_path):
    path = tmp_path / "with-callbacks.ckpt"
    checkpoint = original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "clip")
    torch.save({"state_dict": checkpoint, "callbacks": _Callback()}, path)
    with pytest.raises(ModelFormatError, match="holds pickled Python objects besides tensors") as err:
        load_model(path, device="cpu")
    assert len(str(err.value).splitlines()) == 1


def test_safetensors_file_named_ckpt_is_read_by_content(tiny, tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "renamed.ckpt"
    save_file(original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "clip"), str(path))
    _same_weights(load_model(path, device="cpu", dtype="fp32", config=tiny_model_dir).unet, tiny.unet)


def test_single_file_that_is_not_a_full_model(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.alpha": torch.ones(1)}, str(path))
    with pytest.raises(ModelFormatError, match="holds no Stable Diffusion UNet"):
        load_model(path, device="cpu")


def test_single_safetensors_file_equals_folder(tiny, tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny-sd1.safetensors"
    save_file(original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "clip"), str(path))
    single = load_model(path, device="cpu", dtype="fp32", config=tiny_model_dir)
    assert single.source == str(path.resolve())
    for part in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(tiny, part), getattr(single, part))
        assert not getattr(single, part).training
    assert single.tokenizer("impervious surfaces").input_ids == tiny.tokenizer("impervious surfaces").input_ids
    assert single.scheduler_config == tiny.scheduler_config
    assert load_model(path, device="cpu", dtype="fp32", config=tiny_model_dir) is single


def test_single_ckpt_file_with_openclip_text_encoder(tiny, tiny_model_dir, tmp_path):
    """SD 2.x layout (.ckpt, nested state_dict): OpenCLIP keys, tokenizer built offline padding with "!"."""
    config = tmp_path / "config"
    shutil.copytree(tiny_model_dir, config, ignore=shutil.ignore_patterns("tokenizer", "scheduler", "*.safetensors"))
    path = tmp_path / "tiny-sd2.ckpt"
    checkpoint = original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "openclip")
    torch.save({"global_step": 1, "state_dict": checkpoint}, path)
    single = load_model(path, device="cpu", dtype="fp32", config=config)
    for part in ("unet", "vae", "text_encoder"):
        _same_weights(getattr(tiny, part), getattr(single, part))
    assert single.tokenizer.pad_token == "!"
    assert single.scheduler_config["prediction_type"] == "v_prediction"


def test_single_file_that_does_not_fit_the_bundled_config(tiny, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file(original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "clip"), str(path))
    with pytest.raises(ModelFormatError, match=r"do not fit the config in '.*configs/sd1'.*\(49408, 32\)"):
        load_model(path, device="cpu")


def test_single_file_missing_weights(tiny, tiny_model_dir, tmp_path):
    from safetensors.torch import save_file

    checkpoint = original_checkpoint(tiny.unet, tiny.vae, tiny.text_encoder, "clip")
    del checkpoint["model.diffusion_model.out.2.bias"]
    path = tmp_path / "incomplete.safetensors"
    save_file(checkpoint, str(path))
    with pytest.raises(ModelFormatError, match=r"lacks 1 unet weight\(s\) \(e.g. conv_out.bias\)"):
        load_model(path, device="cpu", config=tiny_model_dir)


def test_config_only_for_single_files(tiny_model_dir):
    with pytest.raises(BadInputError, match="config= only applies"):
        load_model(tiny_model_dir, device="cpu", config=tiny_model_dir)


def test_random_source_through_load_model(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("MASKDIFFUSION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "cache" / "napari-maskdiffusion" / "random-tiny"
    assert is_random_source("random:tiny") and not is_random_source("someone/tiny-sd")
    sd = load_model("random:tiny", "cpu", "fp32")
    assert (folder / "model_index.json").is_file()
    assert sd.source == "random:tiny" and sd.precision == "fp32"
    _same_weights(sd.unet, tiny.unet)
    assert load_model("random:tiny", "cpu", "fp32") is sd
    assert resolve_source("random:tiny") == str(folder)
    assert resolve_source("someone/tiny-sd") == "someone/tiny-sd"
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "scratch folder left behind"
    with pytest.raises(BadInputError, match="use random:tiny or random:sd15"):
        load_model("random:huge", "cpu")


REAL_SIZES = {  # parameter counts of the released SD 1.x / 2.x components
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480, "cross": 768},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text": 340_387_840, "cross": 1024},
}


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_bundled_configs_have_real_sd_shapes(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = single_file.BUNDLED_CONFIGS / family
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder, subfolder="vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))
    real = REAL_SIZES[family]
    assert tuple(unet.config.block_out_channels) == (320, 640, 1280, 1280)
    assert unet.config.cross_attention_dim == text.config.hidden_size == real["cross"]
    attn2 = unet.down_blocks[2].attentions[0].transformer_blocks[0].attn2
    assert tuple(attn2.to_k.weight.shape) == (1280, real["cross"])
    assert tuple(unet.up_blocks[1].resnets[2].conv1.weight.shape[1:2]) == (1920,)
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512)
    assert vae.config.scaling_factor == 0.18215
    def count(module):
        return sum(p.numel() for p in module.parameters())

    assert (count(unet), count(vae), count(text)) == (real["unet"], real["vae"], real["text"])
    assert single_file.bundled_scheduler_config(family)["beta_schedule"] == "scaled_linear"

"""Stable Diffusion weights for the engine: a hub id, a diffusers folder or a single checkpoint file.

Only what MaskDiffusion needs is loaded, component by component (tokenizer, text encoder, VAE,
UNet, scheduler config): no pipeline, no safety checker. Single ``.safetensors``/``.ckpt`` files
in the original LDM layout are converted with diffusers' single-file key mappings against the
SD 1.x / 2.x configs bundled in ``configs/``, so they load with no network at all (SPEC §4).
Loaded models are kept per (source, device, dtype) until :func:`clear_model_cache`.

torch, diffusers and transformers are imported inside the functions: importing this module stays
cheap for napari's start-up.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.params import DEFAULT_MODEL
from ..errors import BadInputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "SDModel",
    "ModelNotFoundError",
    "ModelFormatError",
    "resolve_device",
    "resolve_dtype",
    "load_model",
    "clear_model_cache",
]

BUNDLED_CONFIGS = Path(__file__).parent / "configs"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer")
HOW_TO = (
    "To use local weights, pass a diffusers folder (with model_index.json) or a .safetensors/.ckpt file, "
    "e.g. --model /path/to/stable-diffusion-v1-4"
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}
_CACHE: dict[tuple, SDModel] = {}
_LOCK = threading.Lock()


@dataclass(eq=False)
class SDModel:
    """The frozen Stable Diffusion parts the engine runs, on one device in one dtype."""

    tokenizer: Any = field(repr=False)
    text_encoder: Any = field(repr=False)
    vae: Any = field(repr=False)
    unet: Any = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    source: str
    scheduler_config: dict = field(repr=False)


class ModelNotFoundError(BadInputError):
    """The weights are not where the user said (or not in the Hugging Face cache)."""


class ModelFormatError(ModelNotFoundError):
    """Something is there, but it is not readable Stable Diffusion 1.x/2.x weights."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The torch device for a name: ``auto`` picks cuda, then mps, then cpu."""
    import torch

    name = str(device if device is not None else "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"Device {device!r} asked for, but CUDA is not available here: use auto or cpu.")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"Device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist.")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise ValueError(f"Device {device!r} asked for, but Apple MPS is not available here: use auto or cpu.")
        return dev
    raise ValueError(f"Unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps.")


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """The torch dtype for a name; ``None``/``"auto"``: float16 on cuda/mps, float32 on cpu."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype if dtype is not None else "auto").strip().lower().removeprefix("torch.")
    if name == "auto":
        return torch.float16 if resolve_device(device).type in ("cuda", "mps") else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}: use auto, fp16, fp32 or bf16.")
    return getattr(torch, _DTYPES[name])


def load_model(
    source: str | os.PathLike | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
    *,
    config: str | os.PathLike | None = None,
) -> SDModel:
    """Load (or return the cached) Stable Diffusion model from a hub id, a folder or a single file.

    ``source`` defaults to :data:`~maskdiffusion.core.params.DEFAULT_MODEL`. ``config`` is a
    diffusers-layout folder whose ``unet/``, ``vae/``, ``text_encoder/`` (and, if present,
    ``tokenizer/`` and ``scheduler/``) configs replace the bundled SD 1.x/2.x ones for a single
    checkpoint file. Raises :class:`ModelNotFoundError` with one readable message.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kind, resolved = _resolve_source(source)
    config_dir = _resolve_config(config, kind)
    key = (resolved, str(dev), str(dt), config_dir)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        with _quiet():
            if kind == "file":
                parts = _load_single_file(Path(resolved), config_dir)
            else:
                parts = _load_diffusers(resolved, hub=kind == "hub")
            for name in ("text_encoder", "vae", "unet"):
                parts[name] = parts[name].to(device=dev, dtype=dt).eval().requires_grad_(False)
        model = SDModel(device=dev, dtype=dt, source=resolved, **parts)
        _CACHE[key] = model
        return model


def clear_model_cache() -> None:
    """Forget every loaded model (and give cached GPU memory back)."""
    with _LOCK:
        _CACHE.clear()
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


# --- where the weights are -------------------------------------------------------------------


def _resolve_source(source: str | os.PathLike | None) -> tuple[str, str]:
    """``("hub" | "folder" | "file", resolved)``: an existing path wins over a hub id."""
    text = os.fspath(source) if source is not None else DEFAULT_MODEL
    path = Path(text).expanduser()
    if path.exists():
        path = path.resolve()
        return ("file" if path.is_file() else "folder"), str(path)
    looks_like_path = isinstance(source, os.PathLike) or text.lower().endswith(SINGLE_FILE_SUFFIXES)
    if looks_like_path or not _HUB_ID.match(text):
        raise ModelNotFoundError(f"Model path '{path.absolute()}' does not exist. {HOW_TO}.")
    return "hub", text


def _resolve_config(config: str | os.PathLike | None, kind: str) -> str | None:
    if config is None:
        return None
    if kind != "file":
        raise ValueError("config= only applies to a single .safetensors/.ckpt file.")
    path = Path(config).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"Config folder '{path}' does not exist (a diffusers-layout folder is needed).")
    return str(path)


def _hf_cache_dir() -> Path:
    """The hub cache folder, read from the environment now (not when huggingface_hub was imported)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


# --- diffusers folders and hub ids -------------------------------------------------------------


def _load_diffusers(source: str, hub: bool) -> dict:
    """Load the four components and the scheduler config from a diffusers layout."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if hub:
        offline = _hub_offline()
        kwargs = {"local_files_only": offline, "cache_dir": str(_hf_cache_dir())}
        _check_model_index(_hub_model_index(source, **kwargs), source)
    else:
        kwargs = {}
        _check_model_index(Path(source) / "model_index.json", source)

    loaders = {
        "tokenizer": CLIPTokenizer.from_pretrained,
        "text_encoder": CLIPTextModel.from_pretrained,
        "vae": AutoencoderKL.from_pretrained,
        "unet": UNet2DConditionModel.from_pretrained,
    }
    parts = {}
    for name, load in loaders.items():
        try:
            parts[name] = load(source, subfolder=name, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise ModelFormatError(f"Could not load the {name} of '{source}': {_first_line(err)}") from err
    try:
        parts["scheduler_config"] = dict(DDIMScheduler.load_config(source, subfolder="scheduler", **kwargs))
    except (OSError, ValueError):
        parts["scheduler_config"] = _bundled_scheduler_config("sd1")
    return parts


def _hub_model_index(repo_id: str, **kwargs) -> Path:
    """Fetch (or find in the cache) ``model_index.json`` of a hub repo; the clear errors live here."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "model_index.json", **kwargs))
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(
            f"Model '{repo_id}' is neither a local path nor a repository on the Hugging Face Hub "
            f"(gated or private ones need `hf auth login`). {HOW_TO}."
        ) from err
    except LocalEntryNotFoundError as err:
        missing = err
    except EntryNotFoundError as err:
        raise ModelFormatError(
            f"'{repo_id}' on the Hugging Face Hub is not a diffusers Stable Diffusion repository "
            f"(no model_index.json). {HOW_TO}."
        ) from err
    except Exception as err:
        missing = err
    if kwargs["local_files_only"]:
        reason = "downloads are off (HF_HUB_OFFLINE=1)"
    else:
        reason = f"it could not be downloaded ({_first_line(missing)})"
    raise ModelNotFoundError(
        f"Model '{repo_id}' is neither a local path nor in the Hugging Face cache ({kwargs['cache_dir']}), "
        f"and {reason}. {HOW_TO}."
    ) from missing


def _check_model_index(index_file: Path, source: str) -> None:
    import json

    folder = index_file.parent
    if not index_file.is_file():
        hint = ""
        files = sorted(p.name for p in folder.iterdir() if p.suffix in SINGLE_FILE_SUFFIXES)
        if files:
            hint = f" It holds {files[0]}: pass that file itself."
        raise ModelFormatError(
            f"'{source}' is not a diffusers Stable Diffusion folder: model_index.json is missing.{hint} {HOW_TO}."
        )
    try:
        index = json.loads(index_file.read_text())
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"'{index_file}' is not readable JSON: {_first_line(err)}") from err
    missing = [name for name in COMPONENTS if name not in index]
    if missing:
        raise ModelFormatError(
            f"'{source}' is not a Stable Diffusion 1.x/2.x model: model_index.json lists no {', '.join(missing)}."
        )


# --- single checkpoint files ---------------------------------------------------------------------


def _load_single_file(path: Path, config_dir: str | None) -> dict:
    """Convert an original-layout SD checkpoint with the bundled (or the given) diffusers configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    checkpoint = _read_checkpoint(path)
    family = _checkpoint_family(checkpoint, path)
    config_dir = config_dir or str(BUNDLED_CONFIGS / family)

    def unet_state(config):
        return convert_ldm_unet_checkpoint(checkpoint, config, extract_ema=True)

    def vae_state(config):
        return convert_ldm_vae_checkpoint(checkpoint, config)

    return {
        "tokenizer": _single_file_tokenizer(config_dir, family),
        "text_encoder": _text_encoder_from_checkpoint(checkpoint, family, config_dir, path),
        "vae": _diffusers_model_from_checkpoint(AutoencoderKL, vae_state, config_dir, "vae", path),
        "unet": _diffusers_model_from_checkpoint(UNet2DConditionModel, unet_state, config_dir, "unet", path),
        "scheduler_config": _scheduler_config_for(config_dir, family),
    }


def _read_checkpoint(path: Path) -> dict:
    """The flat state dict of a ``.safetensors`` file or a (tensors-only) pickled ``.ckpt``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            import torch

            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = checkpoint["state_dict"]
    except Exception as err:
        raise ModelFormatError(
            f"Could not read the checkpoint '{path}': {_first_line(err)}. "
            "Is it a complete .safetensors/.ckpt file (a .ckpt must hold tensors only)?"
        ) from err
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ModelFormatError(f"The checkpoint '{path}' holds no weights.")
    return checkpoint


def _checkpoint_family(checkpoint: dict, path: Path) -> str:
    """``"sd1"`` (CLIP ViT-L text encoder) or ``"sd2"`` (OpenCLIP ViT-H), from the key names."""
    keys = checkpoint.keys()
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise ModelFormatError(f"'{path}' is an SDXL checkpoint; only Stable Diffusion 1.x and 2.x are supported.")
    conv_in = checkpoint.get("model.diffusion_model.input_blocks.0.0.weight")
    if conv_in is None:
        raise ModelFormatError(
            f"'{path}' holds no Stable Diffusion UNet (no model.diffusion_model.* weights): "
            "a LoRA, VAE or embedding file? A full SD 1.x/2.x checkpoint is needed."
        )
    if conv_in.shape[1] != 4:
        raise ModelFormatError(
            f"'{path}' has a UNet with {conv_in.shape[1]} input channels (inpainting or similar); 4 are needed."
        )
    if not any(k.startswith("first_stage_model.") for k in keys):
        raise ModelFormatError(f"'{path}' holds no VAE weights (first_stage_model.*): a full SD checkpoint is needed.")
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    raise ModelFormatError(
        f"'{path}' holds no text encoder weights (cond_stage_model.*): a full SD checkpoint is needed."
    )


def _diffusers_model_from_checkpoint(cls, convert, config_dir: str, subfolder: str, path: Path):
    """Build a diffusers model on the meta device (no random init) and assign the converted weights."""
    import torch

    try:
        config = cls.load_config(config_dir, subfolder=subfolder)
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"No {subfolder} config in '{config_dir}': {_first_line(err)}") from err
    with torch.device("meta"):
        model = cls.from_config(config)
    state = convert(config)
    _check_fit(model.state_dict(), state, path, subfolder, config_dir)
    model.load_state_dict(state, strict=False, assign=True)
    return model


def _text_encoder_from_checkpoint(checkpoint: dict, family: str, config_dir: str, path: Path):
    """The CLIP text encoder: ViT-L keys as they are (sd1), OpenCLIP keys remapped (sd2)."""
    from types import SimpleNamespace

    import torch
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        config = CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder")
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"No text_encoder config in '{config_dir}': {_first_line(err)}") from err
    if family == "sd1":
        state = convert_ldm_clip_checkpoint(checkpoint)
    else:
        state = convert_open_clip_checkpoint(SimpleNamespace(config=config), checkpoint)
    with torch.device("meta"):
        expected = CLIPTextModel(config).state_dict()
    own_name = {_plain(k): k for k in expected}
    state = {own_name.get(_plain(k), k): v for k, v in state.items()
             if not k.endswith(("position_ids", "text_projection.weight"))}
    _check_fit(expected, state, path, "text_encoder", config_dir)
    return CLIPTextModel.from_pretrained(None, config=config, state_dict=state)


def _single_file_tokenizer(config_dir: str, family: str):
    """The config folder's tokenizer if it has one, else CLIP's built from the bundled BPE file."""
    if (Path(config_dir) / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer")
    from .tokenizer import build_clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="maskdiffusion-tokenizer-") as folder:
        return build_clip_tokenizer(folder, pad_token="!" if family == "sd2" else "<|endoftext|>")


def _scheduler_config_for(config_dir: str, family: str) -> dict:
    from diffusers import DDIMScheduler

    try:
        return dict(DDIMScheduler.load_config(config_dir, subfolder="scheduler"))
    except (OSError, ValueError):
        return _bundled_scheduler_config(family)


def _bundled_scheduler_config(family: str) -> dict:
    import json

    return json.loads((BUNDLED_CONFIGS / family / "scheduler" / "scheduler_config.json").read_text())


def _check_fit(expected: dict, state: dict, path: Path, component: str, config_dir: str) -> None:
    """One clear error when converted weights are missing or shaped unlike the config's model."""
    given = {_plain(k): tuple(v.shape) for k, v in state.items()}
    wanted = {_plain(k): tuple(v.shape) for k, v in expected.items() if not k.endswith("position_ids")}
    for key, shape in wanted.items():
        if key in given and given[key] != shape:
            raise ModelFormatError(
                f"The {component} weights of '{path}' do not fit the config in '{config_dir}': "
                f"{key} is {given[key]} in the checkpoint but {shape} in the config."
            )
    missing = [k for k in wanted if k not in given]
    if missing:
        raise ModelFormatError(
            f"'{path}' lacks {len(missing)} {component} weight(s) (e.g. {missing[0]}): "
            "not a complete Stable Diffusion 1.x/2.x checkpoint."
        )


# --- small helpers ---------------------------------------------------------------------------------


def _plain(key: str) -> str:
    """A weight name without the ``text_model.`` level that some transformers versions add."""
    return key.removeprefix("text_model.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


@contextlib.contextmanager
def _quiet():
    """Silence diffusers/transformers logs, their progress bars and their warnings while loading."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    saved = [(lib, lib.get_verbosity(), lib.is_progress_bar_enabled())
             for lib in (diffusers_logging, transformers_logging)]
    for lib, _, _ in saved:
        lib.set_verbosity_error()
        lib.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(diffusers|transformers|huggingface_hub|torch)\b")
            yield
    finally:
        for lib, verbosity, bar in saved:
            lib.set_verbosity(verbosity)
            if bar:
                lib.enable_progress_bar()

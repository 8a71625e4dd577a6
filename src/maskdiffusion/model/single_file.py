"""Single ``.safetensors``/``.ckpt`` checkpoints in the original (LDM) layout, read offline.

:func:`read_checkpoint` reads the flat state dict (tensors only: a ``.ckpt`` is unpickled with
``weights_only``); :func:`load_single_file` tells SD 1.x from SD 2.x by the key names and converts
the weights with diffusers' single-file key mappings against the configs bundled in
``configs/`` (or a diffusers-layout ``config`` folder), so no network is needed
(``docs/algorithm.md`` §5). A file that is not such a checkpoint gives one line saying so.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

from .bundled import BUNDLED_CONFIGS, bundled_scheduler_config
from .sources import ModelFormatError, ModelNotFoundError, first_line

__all__ = [
    "BUNDLED_CONFIGS",
    "bundled_scheduler_config",
    "checkpoint_family",
    "load_single_file",
    "read_checkpoint",
    "resolve_config",
]

#: torch.save writes a zip archive; a safetensors header is at most 100 MB.
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_HEADER = 100_000_000


def resolve_config(config: str | os.PathLike) -> str:
    """The absolute path of a diffusers-layout config folder, which must exist."""
    path = Path(config).expanduser().resolve()
    if not path.is_dir():
        raise ModelNotFoundError(f"Config folder '{path}' does not exist (a diffusers-layout folder is needed).")
    return str(path)


def load_single_file(path: Path, config_dir: str | None) -> dict:
    """Convert an original-layout SD checkpoint with the bundled (or the given) diffusers configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    checkpoint = read_checkpoint(path)
    family = checkpoint_family(checkpoint, path)
    config_dir = config_dir or str(BUNDLED_CONFIGS / family)

    def unet_state(config):
        return convert_ldm_unet_checkpoint(checkpoint, config, extract_ema=True)

    def vae_state(config):
        return convert_ldm_vae_checkpoint(checkpoint, config)

    return {
        "tokenizer": _tokenizer(config_dir, family),
        "text_encoder": _text_encoder(checkpoint, family, config_dir, path),
        "vae": _diffusers_model(AutoencoderKL, vae_state, config_dir, "vae", path),
        "unet": _diffusers_model(UNet2DConditionModel, unet_state, config_dir, "unet", path),
        "scheduler_config": _scheduler_config(config_dir, family),
    }


def read_checkpoint(path: Path, what: str = "a Stable Diffusion checkpoint") -> dict:
    """The flat state dict of a safetensors file or a (tensors-only) pickled checkpoint.

    The format is told by the file's first bytes, not its suffix; ``what`` names what it should be.
    """
    not_checkpoint = f"'{path}' is not {what} (not a readable .safetensors/.ckpt file)"
    try:
        with open(path, "rb") as file:
            head = file.read(9)
    except OSError as err:
        raise ModelNotFoundError(f"Could not read '{path}': {err.strerror or first_line(err)}.") from err
    try:
        if _is_safetensors(head):
            from safetensors.torch import load_file

            checkpoint = load_file(str(path), device="cpu")
        else:
            import torch

            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
        while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = checkpoint["state_dict"]
    except Exception as err:
        if head.startswith(_ZIP_MAGIC) and isinstance(err, pickle.UnpicklingError):
            raise ModelFormatError(
                f"'{path}' holds pickled Python objects besides tensors, which are not loaded for safety: "
                "convert it to .safetensors."
            ) from err
        raise ModelFormatError(not_checkpoint) from err
    if not isinstance(checkpoint, dict):
        raise ModelFormatError(not_checkpoint)
    if not checkpoint:
        raise ModelFormatError(f"The checkpoint '{path}' holds no weights.")
    return checkpoint


def _is_safetensors(head: bytes) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian), then ``{``."""
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < _MAX_HEADER


def checkpoint_family(checkpoint: dict, path: Path) -> str:
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


def _diffusers_model(cls, convert, config_dir: str, subfolder: str, path: Path):
    """Build a diffusers model on the meta device (no random init) and assign the converted weights."""
    import torch

    try:
        config = cls.load_config(config_dir, subfolder=subfolder)
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"No {subfolder} config in '{config_dir}': {first_line(err)}") from err
    with torch.device("meta"):
        model = cls.from_config(config)
    state = convert(config)
    _check_fit(model.state_dict(), state, path, subfolder, config_dir)
    model.load_state_dict(state, strict=False, assign=True)
    return model


def _text_encoder(checkpoint: dict, family: str, config_dir: str, path: Path):
    """The CLIP text encoder: ViT-L keys as they are (sd1), OpenCLIP keys remapped (sd2)."""
    from types import SimpleNamespace

    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        config = CLIPTextConfig.from_pretrained(config_dir, subfolder="text_encoder")
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"No text_encoder config in '{config_dir}': {first_line(err)}") from err
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


def _tokenizer(config_dir: str, family: str):
    """The config folder's tokenizer if it has one, else CLIP's built from the bundled BPE file."""
    if (Path(config_dir) / "tokenizer").is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(config_dir, subfolder="tokenizer")
    from .tokenizer import build_clip_tokenizer

    with tempfile.TemporaryDirectory(prefix="maskdiffusion-tokenizer-") as folder:
        return build_clip_tokenizer(folder, pad_token="!" if family == "sd2" else "<|endoftext|>")


def _scheduler_config(config_dir: str, family: str) -> dict:
    from diffusers import DDIMScheduler

    try:
        return dict(DDIMScheduler.load_config(config_dir, subfolder="scheduler"))
    except (OSError, ValueError):
        return bundled_scheduler_config(family)




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


def _plain(key: str) -> str:
    """A weight name without the ``text_model.`` level that some transformers versions add."""
    return key.removeprefix("text_model.")

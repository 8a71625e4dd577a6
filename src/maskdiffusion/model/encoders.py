"""The tile encoder (``docs/algorithm.md`` §2.1, §5): an RGB tile x in [-1, 1] to the UNet's latent z0.

``vae`` is the paper's: ``vae.encode(x).latent_dist.mean * vae.config.scaling_factor``.
``taesd`` is TAESD (diffusers ``AutoencoderTiny``, hub ``madebyollin/taesd``, MIT), about 9×
less work and approximate: ``AutoencoderTiny.encode`` takes x in [-1, 1] (it maps it to the
[0, 1] that TAESD was trained on itself) and returns latents already on the UNet's scale (its
config's ``scaling_factor`` is 1.0; it is applied all the same). Any other value names TAESD
weights: a diffusers folder, a ``.safetensors``/``.pth`` file of its encoder, or a hub id.

Both are modules from x to z0 in float32, so the torch path runs them and the OpenVINO backend
converts them alike.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .loading import cached_weights
from .sources import ModelFormatError, ModelNotFoundError, first_line, hf_cache_dir, hub_file, locate_source

__all__ = ["TAESD_HUB_ID", "TinyLatents", "VaeLatents", "load_taesd", "tile_encoder"]

TAESD_HUB_ID = "madebyollin/taesd"
TAESD_HOW_TO = ("To use local TAESD weights, pass their diffusers folder or a .safetensors/.pth file of the encoder, "
                "e.g. --encoder /path/to/taesd")
#: Prefixes the encoder's keys carry in a full AutoencoderTiny, in EncoderTiny, and in TAESD's
#: own ``taesd_encoder.pth`` (none).
_KEY_PREFIXES = ("encoder.layers.", "layers.", "")


class VaeLatents(torch.nn.Module):
    """The paper's encoder: the mean of the VAE's latent distribution, scaled."""

    label = "VAE encoder"

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    @property
    def weights(self):
        """The diffusers model whose weights this encoder runs."""
        return self.vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return mean.float() * self.vae.config.scaling_factor


class TinyLatents(torch.nn.Module):
    """TAESD's encoder: x in [-1, 1] as for the VAE; its latents times its scaling factor (1.0)."""

    label = "TAESD encoder"

    def __init__(self, taesd):
        super().__init__()
        self.taesd = taesd

    @property
    def weights(self):
        """The diffusers model whose weights this encoder runs."""
        return self.taesd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.taesd.encode(x.to(self.taesd.dtype)).latents.float() * self.taesd.config.scaling_factor


def tile_encoder(sd, encoder: str) -> torch.nn.Module:
    """The encoder module for ``SegmentParams.encoder`` on ``sd``'s device and precision."""
    if encoder == "vae":
        return VaeLatents(sd.vae)
    return TinyLatents(load_taesd(encoder, sd.device, sd.dtype))


def load_taesd(source: str, device, dtype):
    """TAESD weights (an ``AutoencoderTiny``), loaded once per (source, device, dtype).

    Raises
    ------
    ModelNotFoundError
        One line, as for Stable Diffusion weights: the source, the cache folder, and how to pass
        local weights (:class:`ModelFormatError` when the weights are unreadable).
    """
    kind, where = _locate(source)

    def build():
        taesd = _read_taesd(kind, where).to(device=device, dtype=dtype).eval().requires_grad_(False)
        return taesd.to(memory_format=torch.channels_last)

    return cached_weights(("taesd", where, str(device), str(dtype)), build)


def _locate(source: str) -> tuple[str, str]:
    if source == "taesd":
        return "hub", TAESD_HUB_ID
    try:
        kind, where = locate_source(source)
    except ModelNotFoundError:
        raise ModelNotFoundError(f"Encoder '{source}' is not vae, taesd, an existing TAESD folder or file, "
                                 f"or a hub id. {TAESD_HOW_TO}.") from None
    if kind == "random":
        raise ModelNotFoundError(f"Encoder '{source}' is not vae, taesd or TAESD weights. {TAESD_HOW_TO}.")
    return kind, where


def _read_taesd(kind: str, where: str):
    from diffusers import AutoencoderTiny

    if kind == "file":
        return _taesd_from_file(Path(where))
    kwargs = {}
    if kind == "hub":
        kwargs = {"cache_dir": str(hf_cache_dir())}
        hub_file(where, "config.json", kwargs, "TAESD (a diffusers AutoencoderTiny repository)", TAESD_HOW_TO)
    elif not (Path(where) / "config.json").is_file():
        raise ModelFormatError(f"'{where}' is not a TAESD folder: config.json is missing. {TAESD_HOW_TO}.")
    try:
        return AutoencoderTiny.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelFormatError(f"Could not load TAESD from '{where}': {first_line(err)}") from err


def _taesd_from_file(path: Path):
    """An ``AutoencoderTiny`` of TAESD's default configuration with the file's encoder weights
    (a full diffusers AutoencoderTiny, its encoder alone, or TAESD's own ``taesd_encoder``)."""
    from diffusers import AutoencoderTiny

    from .single_file import read_checkpoint

    state = read_checkpoint(path, "TAESD weights")
    taesd = AutoencoderTiny()
    for prefix in _KEY_PREFIXES:
        layers = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if layers and all(k.split(".", 1)[0].isdigit() for k in layers):
            break
    else:
        raise ModelFormatError(f"'{path}' holds no TAESD encoder weights. {TAESD_HOW_TO}.")
    try:
        taesd.encoder.layers.load_state_dict(layers)
    except RuntimeError as err:
        raise ModelFormatError(f"'{path}' is not TAESD's encoder: {first_line(err)}") from err
    return taesd


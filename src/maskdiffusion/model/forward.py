"""The per-tile forward of MaskDiffusion (``docs/algorithm.md`` §2.1–2.3): one encode, one UNet pass.

No VAE decode, no inversion, no second model: :class:`TileRunner` encodes the prompts once per
run, then turns each RGB tile into head-averaged token maps and the two feature tensors, with
PyTorch or, where ``SegmentParams.backend`` chooses it, OpenVINO (:mod:`.openvino_backend`).
"""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..core.params import SegmentParams
from . import openvino_backend
from .capture import CapturedUNet
from .encoders import tile_encoder

__all__ = ["TileFeatures", "TileRunner"]


@dataclass
class TileFeatures:
    """One tile's capture: token maps (prompts, 77, gh, gw) and features (coarse, fine), float32."""

    token_maps: torch.Tensor
    coarse: torch.Tensor
    fine: torch.Tensor


class TileRunner:
    """Runs tiles through a loaded :class:`~maskdiffusion.model.loading.SDModel`.

    The prompts are encoded once; capture is installed on the UNet for each tile's pass only, so
    the cached model is untouched between tiles (and a stopped run leaves nothing behind).
    :meth:`prepare` chooses the backend before the first tile; ``backend`` says which runs.
    """

    def __init__(self, sd, params: SegmentParams, input_ids):
        self.sd = sd
        self.params = params
        ids = torch.tensor(np.asarray(input_ids), dtype=torch.long, device=sd.device)
        with torch.inference_mode():
            self.embeddings = sd.text_encoder(ids)[0]
        self.encoder = tile_encoder(sd, params.encoder)
        self.unet = CapturedUNet(sd.unet, params.cross_attention_layers, params.feature_layers, params.attention)
        self.backend = "torch"
        self._openvino = None

    def prepare(self, tile_hw: tuple[int, int]) -> Generator[str, None, None]:
        """Choose the backend for tiles of ``tile_hw``, converting the model for OpenVINO the
        first time; yields what to tell the user meanwhile.

        A conversion that fails falls back to PyTorch with one warning under ``auto`` and
        raises :class:`~.openvino_backend.BackendError` under ``openvino``.
        """
        p = self.params
        if not openvino_backend.use_openvino(p.backend, self.sd):
            return
        try:
            self._openvino = yield from openvino_backend.prepare(self.sd, self.encoder, self.unet, tile_hw,
                                                                 self.embeddings, p.timestep)
        except openvino_backend.ConversionError as err:
            if p.backend == "openvino":
                raise openvino_backend.BackendError(f"OpenVINO could not convert this model: {err}") from err
            warnings.warn(f"OpenVINO could not convert this model ({err}); running it with PyTorch", stacklevel=2)
        else:
            self.backend = "openvino"

    def latents(self, tile: np.ndarray) -> torch.Tensor:
        """z0 = E(x) for an (h, w, 3) uint8 tile (x in [-1, 1]), float32; noised if asked."""
        sd, p = self.sd, self.params
        x = torch.from_numpy(np.ascontiguousarray(tile)).to(sd.device).permute(2, 0, 1)[None]
        x = (x.float() / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)
        z = self._openvino.encode(x) if self._openvino is not None else self.encoder(x)
        if p.noise and p.timestep > 0:
            from diffusers import DDPMScheduler

            scheduler = DDPMScheduler.from_config(sd.scheduler_config)
            g = torch.Generator(device="cpu").manual_seed(p.seed)
            noise = torch.randn(z.shape, generator=g).to(device=z.device, dtype=z.dtype)
            z = scheduler.add_noise(z, noise, torch.tensor([p.timestep]))
        return z

    def __call__(self, tile: np.ndarray) -> TileFeatures:
        """Capture one (h, w, 3) uint8 tile; h and w are multiples of 64."""
        with torch.inference_mode():
            z = self.latents(tile)
            t = torch.tensor(self.params.timestep)
            capture = self._openvino.capture if self._openvino is not None else self.unet
            return TileFeatures(*capture(z, t, self.embeddings))

"""The per-tile forward of MaskDiffusion (``docs/algorithm.md`` §2.1–2.3): one VAE encode, one UNet pass.

No VAE decode, no inversion, no second model: :class:`TileRunner` encodes the prompts once per
run, then turns each RGB tile into head-averaged token maps and the two feature tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.params import SegmentParams
from ..core.tiling import GRID_STRIDE
from .capture import StopUNet, capture_unet

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
    """

    def __init__(self, sd, params: SegmentParams, input_ids):
        self.sd = sd
        self.params = params
        ids = torch.tensor(np.asarray(input_ids), dtype=torch.long, device=sd.device)
        with torch.inference_mode():
            self.embeddings = sd.text_encoder(ids)[0].to(sd.dtype)

    def latents(self, tile: np.ndarray) -> torch.Tensor:
        """z0 = E(x)·scaling_factor for an (h, w, 3) uint8 tile (x in [-1, 1]); noised if asked."""
        sd, p = self.sd, self.params
        x = torch.from_numpy(np.ascontiguousarray(tile)).to(sd.device).permute(2, 0, 1)[None]
        x = (x.to(sd.dtype) / 127.5 - 1.0).contiguous(memory_format=torch.channels_last)
        z = sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor
        if p.noise and p.timestep > 0:
            from diffusers import DDPMScheduler

            scheduler = DDPMScheduler.from_config(sd.scheduler_config)
            g = torch.Generator(device="cpu").manual_seed(p.seed)
            noise = torch.randn(z.shape, generator=g).to(device=z.device, dtype=z.dtype)
            z = scheduler.add_noise(z, noise, torch.tensor([p.timestep]))
        return z

    def __call__(self, tile: np.ndarray) -> TileFeatures:
        """Capture one (h, w, 3) uint8 tile; h and w are multiples of 64."""
        p = self.params
        h, w = tile.shape[:2]
        capture = capture_unet(self.sd.unet, p.cross_attention_layers, p.feature_layers, p.attention)
        with torch.inference_mode(), capture as store:
            z = self.latents(tile)
            store.reset(tuple(z.shape[-2:]), (h // GRID_STRIDE, w // GRID_STRIDE))
            batch = self.embeddings.shape[0]
            try:
                self.sd.unet(z.expand(batch, -1, -1, -1), p.timestep, encoder_hidden_states=self.embeddings)
            except StopUNet:
                pass
            if not store.complete:
                raise RuntimeError("the UNet pass did not reach every captured layer")
            coarse, fine = (store.features[n] for n in p.feature_layers)
            return TileFeatures(store.token_maps(), coarse, fine)

"""A tiny random-weight TAESD (diffusers ``AutoencoderTiny``) saved as a diffusers folder, for
tests of ``--encoder``: TAESD's layout (three stride-2 convolutions, 4 latent channels) at a
width of 8 channels."""

from __future__ import annotations

from pathlib import Path


def build_tiny_taesd(folder: Path, seed: int = 0) -> Path:
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    taesd = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1))
    taesd.save_pretrained(folder)
    return Path(folder)

"""Random-weight Stable Diffusion models with SD 1.x's exact block layout (``docs/algorithm.md`` §5).

``"tiny"`` is for tests (seconds on a CPU), ``"sd15"`` has SD 1.5's full sizes for benchmarks:
the cost of a pass is the real one, the masks are meaningless. Both are saved as an ordinary
diffusers folder and loaded by :func:`maskdiffusion.model.loading.load_model` like real weights;
``load_model("random:tiny")`` builds it on first use (:func:`random_model_folder`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["SIZES", "build_random_sd", "random_model_folder"]

SIZES = {
    "tiny": {
        "unet_channels": (32, 32, 64, 64), "norm_groups": 8, "heads": 8, "cross_dim": 32,
        "vae_channels": (8, 16, 32, 32), "text_layers": 2, "text_heads": 4, "text_ffn": 37,
    },
    "sd15": {
        "unet_channels": (320, 640, 1280, 1280), "norm_groups": 32, "heads": 8, "cross_dim": 768,
        "vae_channels": (128, 256, 512, 512), "text_layers": 12, "text_heads": 12, "text_ffn": 3072,
    },
}


def build_random_sd(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Build a random-weight SD 1.x-layout model and save it as a diffusers folder."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import build_clip_tokenizer

    s = SIZES[size]
    folder = Path(folder)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=s["unet_channels"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=s["cross_dim"],
        attention_head_dim=s["heads"],
        norm_num_groups=s["norm_groups"],
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=s["vae_channels"],
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=s["norm_groups"],
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=s["cross_dim"],
            intermediate_size=s["text_ffn"],
            num_hidden_layers=s["text_layers"],
            num_attention_heads=s["text_heads"],
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=0 if size == "tiny" else 49406,
            eos_token_id=2 if size == "tiny" else 49407,
            pad_token_id=1,
        )
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, steps_offset=1,
    )
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text_encoder.save_pretrained(folder / "text_encoder")
    scheduler.save_pretrained(folder / "scheduler")
    build_clip_tokenizer(folder / "tokenizer")
    _write_model_index(folder)
    return folder


def _write_model_index(folder: Path) -> None:
    import json

    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def random_model_folder(source: str) -> Path:
    """The folder of ``random:tiny`` or ``random:sd15``, built in the user cache on first use.

    The cache is :func:`~.cache_folder.cache_folder`. The model is built in a scratch folder
    beside it and renamed into place, so processes starting together (Dask workers) never read
    a half-written model.
    """
    size = source.split(":", 1)[1] if source.startswith("random:") else source
    if size not in SIZES:
        from ..errors import BadInputError

        raise BadInputError(f"Unknown random model {source!r}: use random:tiny or random:sd15.")
    from .cache_folder import cache_folder

    folder = cache_folder() / f"random-{size}"
    if not (folder / "model_index.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".random-{size}-", dir=folder.parent) as scratch:
            built = build_random_sd(Path(scratch) / "model", size)
            if folder.exists() and not (folder / "model_index.json").exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(built, folder)
            except OSError:
                if not (folder / "model_index.json").exists():
                    raise
    return folder

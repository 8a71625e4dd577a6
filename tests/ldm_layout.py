"""Test helper: write a diffusers-layout SD model back in the original LDM (CompVis) key layout.

The inverse of diffusers' single-file conversion for SD 1.x-shaped UNets and VAEs, with the text
encoder either as CLIP ViT-L keys (SD 1.x) or as OpenCLIP keys with fused q/k/v (SD 2.x). Lets the
tests turn the tiny random model into a ``.safetensors``/``.ckpt`` file like those users download.
"""

from __future__ import annotations

import re

import torch

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
            "self_attn.out_proj": "attn.out_proj"}


def original_checkpoint(unet, vae, text_encoder, text_layout: str = "clip") -> dict[str, torch.Tensor]:
    """One flat state dict as in an SD 1.x (``"clip"``) or SD 2.x (``"openclip"``) checkpoint file."""
    state = {"model.diffusion_model." + k: v for k, v in _unet(unet).items()}
    state |= {"first_stage_model." + k: v for k, v in _vae(vae).items()}
    text = _clip(text_encoder) if text_layout == "clip" else _openclip(text_encoder)
    state |= text
    state["alphas_cumprod"] = torch.linspace(1.0, 0.0, 1000)
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _rename(name: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        name = name.replace(new, old)
    return name


def _unet(unet) -> dict[str, torch.Tensor]:
    per_block = unet.config.layers_per_block + 1
    up_has_attention = [hasattr(block, "attentions") for block in unet.up_blocks]
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for key, value in unet.state_dict().items():
        if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = _unet_layer("input_blocks", per_block * block + layer + 1, kind, rest)
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"input_blocks.{per_block * (int(m[1]) + 1)}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"middle_block.{2 * int(m[1])}.{_rename(m[2], RESNET)}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            new = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = _unet_layer("output_blocks", per_block * block + layer, kind, rest)
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            block = int(m[1])
            slot = 2 if up_has_attention[block] else 1
            new = f"output_blocks.{per_block * block + per_block - 1}.{slot}.conv.{m[2]}"
        else:
            prefix, _, rest = key.rpartition(".")
            new = f"{top[prefix]}.{rest}"
        out[new] = value
    return out


def _unet_layer(blocks: str, index: int, kind: str, rest: str) -> str:
    if kind == "resnets":
        return f"{blocks}.{index}.0.{_rename(rest, RESNET)}"
    return f"{blocks}.{index}.1.{rest}"


def _vae(vae) -> dict[str, torch.Tensor]:
    n_up = len(vae.decoder.up_blocks)
    out = {}
    for key, value in vae.state_dict().items():
        new = key.replace("conv_norm_out", "norm_out")
        if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            new = f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], VAE_ATTENTION)}"
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[new.replace("conv_shortcut", "nin_shortcut")] = value
    return out


def _text_state(text_encoder) -> dict[str, torch.Tensor]:
    """Text encoder weights keyed without transformers' optional ``text_model.`` wrapper."""
    return {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()
            if not k.endswith("position_ids")}


def _clip(text_encoder) -> dict[str, torch.Tensor]:
    prefix = "cond_stage_model.transformer.text_model."
    state = {prefix + k: v for k, v in _text_state(text_encoder).items()}
    state[prefix + "embeddings.position_ids"] = torch.arange(text_encoder.config.max_position_embeddings)[None]
    return state


def _openclip(text_encoder) -> dict[str, torch.Tensor]:
    prefix = "cond_stage_model.model."
    text = _text_state(text_encoder)
    top = {"embeddings.token_embedding.weight": "token_embedding.weight",
           "embeddings.position_embedding.weight": "positional_embedding",
           "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
    out = {prefix + old: text.pop(new) for new, old in top.items()}
    for key in [k for k in text if re.search(r"self_attn\.q_proj", k)]:
        base, _, kind = key.replace("encoder.layers.", "transformer.resblocks.").partition(".self_attn.q_proj.")
        qkv = [text.pop(key.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        out[f"{prefix}{base}.attn.in_proj_{kind}"] = torch.cat(qkv)
    for key, value in text.items():
        out[prefix + _rename(key.replace("encoder.layers.", "transformer.resblocks."), OPENCLIP)] = value
    hidden = text_encoder.config.hidden_size
    out[prefix + "text_projection"] = torch.eye(hidden)
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out

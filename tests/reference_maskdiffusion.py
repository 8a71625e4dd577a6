"""A second, deliberately plain implementation of SPEC §2 for one tile, to check the engine.

It shares no code with the engine: the full UNet runs with diffusers' own attention, forward
hooks recompute q·kᵀ per head, each head is resized on its own, and the spans are found by
searching the joined prompt's token ids.
"""

import numpy as np
import torch
from torch.nn import functional


def _find_spans(tokenizer, prompts, ids):
    spans, pos = [], 1
    for p in prompts:
        tok = tokenizer(p, add_special_tokens=False).input_ids
        while ids[pos : pos + len(tok)] != tok:
            pos += 1
        spans.append(list(range(pos, pos + len(tok))))
        pos += len(tok)
    return spans


@torch.no_grad()
def reference_segment(image_uint8, class_prompts, tokenizer, text_encoder, vae, unet):
    S = image_uint8.shape[0]
    g = S // 16
    text = " and ".join(class_prompts)
    ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    emb = text_encoder(ids)[0]
    spans = _find_spans(tokenizer, class_prompts, ids[0].tolist())

    x = torch.tensor(image_uint8, dtype=torch.float32).permute(2, 0, 1)[None] / 255 * 2 - 1
    z = vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    head_maps, feats, hooks = [], {}, []

    def attn_hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        ehs = kwargs["encoder_hidden_states"]
        q, k = module.to_q(hs), module.to_k(ehs)
        n = q.shape[1]
        side = int(round(np.sqrt(n)))
        d = q.shape[-1] // module.heads
        for h in range(module.heads):
            qh, kh = q[0, :, h * d : (h + 1) * d], k[0, :, h * d : (h + 1) * d]
            m = torch.exp(qh @ kh.T * module.scale)  # (n, 77)
            m = m.T.reshape(77, side, side)
            head_maps.append(functional.interpolate(m[None], size=(g, g), mode="bilinear", align_corners=False)[0])

    for name, module in unet.named_modules():
        if name.endswith("attn2") and name.split(".attentions")[0] in ("down_blocks.2", "mid_block", "up_blocks.1"):
            hooks.append(module.register_forward_pre_hook(attn_hook, with_kwargs=True))
    for name in ("up_blocks.1.resnets.2", "up_blocks.2.resnets.2"):
        module = dict(unet.named_modules())[name]
        hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: feats.__setitem__(name, a[0][0])))
    unet(z, 0, encoder_hidden_states=emb)
    for h in hooks:
        h.remove()

    avg = torch.stack(head_maps).mean(0)
    maps = torch.stack([avg[s].mean(0) for s in spans])
    maps = maps / maps.amax(dim=(1, 2), keepdim=True)

    coarse, fine = feats["up_blocks.1.resnets.2"], feats["up_blocks.2.resnets.2"]
    coarse = coarse / coarse.norm(dim=0, keepdim=True)
    fine = fine / fine.norm(dim=0, keepdim=True)
    coarse = functional.interpolate(coarse[None], size=fine.shape[-2:], mode="bilinear", align_corners=False)[0]
    f = torch.cat([coarse, fine])
    f = f / f.norm(dim=0, keepdim=True)

    K = len(class_prompts)
    scores = torch.zeros(K, g, g)
    for k in range(K):
        c = (maps[k][None] * f).sum(dim=(1, 2)) / maps[k].sum()
        scores[k] = (f * c[:, None, None]).sum(0)
    up = functional.interpolate(scores[None], size=(S, S), mode="bilinear", align_corners=False)[0]
    return up.argmax(0).numpy(), maps.numpy()

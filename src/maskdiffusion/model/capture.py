"""What one UNet pass leaves behind for MaskDiffusion (``docs/algorithm.md`` §2.3): an attention
processor that records cross-attention maps, and hooks that record the input of two resnets.

``capture_unet`` installs both on a UNet for the duration of a ``with`` block and restores the
UNet's own processors afterwards, so a cached model stays untouched for other users.
:class:`CapturedUNet` is the pass as a module, the UNet truncated after its last captured layer:
the torch path runs it, and the OpenVINO backend converts this same graph.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.nn import functional

from ..core.tiling import GRID_STRIDE
from ..errors import BadInputError

__all__ = ["CaptureStore", "CapturedUNet", "CrossAttentionCaptureProcessor", "StopUNet", "capture_unet"]

#: exp() of a larger logit overflows float32; real SD logits stay far below.
_MAX_LOGIT = 80.0


class StopUNet(Exception):
    """Raised once everything is captured: nothing after that point feeds the result."""


class CaptureStore:
    """Accumulates one pass: head-summed token maps on the class-map grid, and feature tensors."""

    def __init__(self, n_attention: int, feature_names: Sequence[str], mode: str = "exp", stop_early: bool = True):
        self.n_attention = n_attention
        self.feature_names = tuple(feature_names)
        self.mode = mode
        self.stop_early = stop_early
        self.reset((1, 1), (1, 1))

    def reset(self, latent_hw: tuple[int, int], grid_hw: tuple[int, int]) -> None:
        self.latent_hw = latent_hw
        self.grid_hw = grid_hw
        self.token_sum: torch.Tensor | None = None
        self.heads = 0
        self.attention_calls = 0
        self.features: dict[str, torch.Tensor] = {}

    @property
    def complete(self) -> bool:
        return self.attention_calls == self.n_attention and len(self.features) == len(self.feature_names)

    def _check_done(self) -> None:
        if self.stop_early and self.complete:
            raise StopUNet

    def add_attention(self, logits: torch.Tensor, batch: int, heads: int) -> None:
        """``logits``: (batch·heads, h·w, tokens), q·kᵀ·scale of one layer."""
        hl, wl = self.latent_hw
        factor = round(math.sqrt(hl * wl / logits.shape[1]))
        h, w = hl // factor, wl // factor
        logits = logits.float()
        maps = logits.clamp_max(_MAX_LOGIT).exp() if self.mode == "exp" else logits.softmax(-1)
        maps = maps.reshape(batch, heads, h, w, -1).sum(1).permute(0, 3, 1, 2)
        if (h, w) != self.grid_hw:
            maps = functional.interpolate(maps, size=self.grid_hw, mode="bilinear", align_corners=False)
        self.token_sum = maps if self.token_sum is None else self.token_sum + maps
        self.heads += heads
        self.attention_calls += 1
        self._check_done()

    def add_feature(self, name: str, tensor: torch.Tensor) -> None:
        self.features[name] = tensor.float().mean(0)
        self._check_done()

    def token_maps(self) -> torch.Tensor:
        """(prompts, tokens, gh, gw): every head of every captured layer averaged with equal weight."""
        return self.token_sum / self.heads


class CrossAttentionCaptureProcessor:
    """diffusers attention processor: the usual softmax attention, plus the logits to a store."""

    def __init__(self, store: CaptureStore):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        batch = hidden_states.shape[0]

        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        # the logits in float32 whatever the model's precision: exp() turns bf16's rounding of
        # a logit into a percent-size error of the class maps (docs/algorithm.md §5)
        logits = torch.bmm(query.float(), key.float().transpose(1, 2)) * attn.scale
        if attention_mask is not None:
            logits = logits + attn.prepare_attention_mask(attention_mask, key.shape[1], batch).float()
        probs = logits.softmax(-1).to(value.dtype)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        hidden_states = hidden_states / attn.rescale_output_factor
        self.store.add_attention(logits, batch, attn.heads)
        return hidden_states


_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _unet_lock(unet) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(id(unet), threading.Lock())


def cross_attention_names(unet, blocks: Sequence[str]) -> list[str]:
    """Processor names of the ``attn2`` modules inside the given blocks."""
    names = [n for n in unet.attn_processors if ".attn2." in n and any(n.startswith(b + ".") for b in blocks)]
    if not names:
        raise BadInputError(f"no cross-attention layers found in {list(blocks)}")
    return names


@contextmanager
def capture_unet(unet, attention_blocks: Sequence[str], feature_modules: Sequence[str], mode: str = "exp",
                 stop_early: bool = True) -> Iterator[CaptureStore]:
    """Install capture on ``unet`` (holding it exclusively), yield the store, then restore it."""
    names = cross_attention_names(unet, attention_blocks)
    modules = dict(unet.named_modules())
    missing = [m for m in feature_modules if m not in modules]
    if missing:
        raise BadInputError(f"UNet has no module {missing[0]!r}")
    store = CaptureStore(len(names), feature_modules, mode, stop_early)
    with _unet_lock(unet):
        original = unet.attn_processors
        processor = CrossAttentionCaptureProcessor(store)
        unet.set_attn_processor({n: processor if n in names else p for n, p in original.items()})
        handles = [
            modules[m].register_forward_pre_hook(lambda _mod, args, name=m: store.add_feature(name, args[0]))
            for m in feature_modules
        ]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()
            unet.set_attn_processor(original)


#: Image pixels per latent pixel (the VAE's and TAESD's downsampling).
LATENT_FACTOR = 8


class CapturedUNet(torch.nn.Module):
    """One UNet pass, stopped once everything is captured, as a module.

    ``forward(z, t, embeddings)``: latents (1, 4, h/8, w/8) (expanded to the prompts), the
    timestep (a 0-d tensor) and the prompt embeddings (prompts, 77, width) give, in float32,
    the token maps (prompts, 77, h/16, w/16) with every head of every captured layer averaged,
    and the coarse and fine features of ``feature_layers`` averaged over the prompts.
    """

    def __init__(self, unet, attention_blocks: Sequence[str], feature_modules: Sequence[str], mode: str = "exp"):
        super().__init__()
        self.unet = unet
        self.attention_blocks, self.feature_modules, self.mode = tuple(attention_blocks), tuple(feature_modules), mode

    def forward(self, z: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor):
        latent_hw = tuple(z.shape[-2:])
        grid_hw = tuple(n * LATENT_FACTOR // GRID_STRIDE for n in latent_hw)
        dtype = self.unet.dtype
        z = z.to(dtype).expand(embeddings.shape[0], -1, -1, -1)
        with capture_unet(self.unet, self.attention_blocks, self.feature_modules, self.mode) as store:
            store.reset(latent_hw, grid_hw)
            try:
                self.unet(z, t, encoder_hidden_states=embeddings.to(dtype))
            except StopUNet:
                pass
            if not store.complete:
                raise RuntimeError("the UNet pass did not reach every captured layer")
            coarse, fine = (store.features[n] for n in self.feature_modules)
            return store.token_maps(), coarse, fine

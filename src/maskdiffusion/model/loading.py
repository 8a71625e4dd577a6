"""The frozen Stable Diffusion model the engine runs: loaded once per (source, device, dtype).

:func:`load_model` takes any source :mod:`.sources` understands (hub id, diffusers folder,
``random:tiny``/``random:sd15``) or a single checkpoint file (:mod:`.single_file`), loads only
what MaskDiffusion needs (tokenizer, text encoder, VAE, UNet, scheduler config: no pipeline, no
safety checker) and keeps it until :func:`clear_model_cache`. :func:`resolve_device` and
:func:`resolve_dtype` choose where and in which precision it runs (``docs/algorithm.md`` §5).

torch, diffusers and transformers are imported inside the functions: importing this module stays
cheap for napari's start-up.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadInputError
from .single_file import load_single_file, resolve_config
from .sources import ModelFormatError, ModelNotFoundError, load_diffusers, locate_source

if TYPE_CHECKING:
    import torch

__all__ = [
    "DTypeError",
    "DeviceError",
    "ModelFormatError",
    "ModelNotFoundError",
    "SDModel",
    "cached_weights",
    "clear_model_cache",
    "cpu_has_native_bf16",
    "load_model",
    "place_parts",
    "resolve_device",
    "resolve_dtype",
    "spare_one_core",
]

_DTYPES = {
    "fp16": "float16", "float16": "float16", "half": "float16",
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
}
_PRECISION = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


class DeviceError(BadInputError):
    """A device that does not exist or is not available on this machine."""


class DTypeError(BadInputError):
    """A precision (dtype) name that is not one of auto, fp16, fp32, bf16."""


@dataclass(eq=False)
class SDModel:
    """The frozen Stable Diffusion parts the engine runs, on one device: the VAE and UNet in
    ``dtype``, the text encoder in float32 (:func:`place_parts`)."""

    tokenizer: Any = field(repr=False)
    text_encoder: Any = field(repr=False)
    vae: Any = field(repr=False)
    unet: Any = field(repr=False)
    device: torch.device
    dtype: torch.dtype
    source: str
    scheduler_config: dict = field(repr=False)

    @property
    def precision(self) -> str:
        """``"fp16"``, ``"bf16"`` or ``"fp32"``: the dtype the weights run in, for display."""
        name = str(self.dtype).removeprefix("torch.")
        return _PRECISION.get(name, name)


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
        raise DeviceError(f"Unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {device!r} asked for, but CUDA is not available here: use auto or cpu.")
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise DeviceError(f"Device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) "
                              "exist.")
        return torch.device("cuda", index)
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(f"Device {device!r} asked for, but Apple MPS is not available here: use auto or cpu.")
        return dev
    raise DeviceError(f"Unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps.")


@contextlib.contextmanager
def spare_one_core(device):
    """On the CPU, run torch on all cores but one, so that another thread (napari's interface)
    keeps a core and stays responsive.

    Oversubscribed cores (torch's threads spinning on every core) froze napari for 100-500 ms at a
    time in ``benchmarks/bench_ui_responsiveness.py``; one core fewer costs little compute.
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.device(device).type != "cpu" or cores < 2:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX-BF16), as torch detects it."""
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        found = capabilities()
        return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """The torch dtype for a name.

    ``None``/``"auto"``: float16 on cuda/mps; on a cpu bfloat16 where it is native
    (:func:`cpu_has_native_bf16`), else float32. An explicit ``bf16`` runs on any cpu (slowly
    without hardware support).
    """
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype if dtype is not None else "auto").strip().lower().removeprefix("torch.")
    if name == "auto":
        if resolve_device(device).type in ("cuda", "mps"):
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if name not in _DTYPES:
        raise DTypeError(f"Unknown dtype {dtype!r}: use auto, fp16, fp32 or bf16.")
    return getattr(torch, _DTYPES[name])


def load_model(
    source: str | os.PathLike | None = None,
    device: str | None = "auto",
    dtype: str | None = None,
    *,
    config: str | os.PathLike | None = None,
) -> SDModel:
    """Load (or return the cached) Stable Diffusion model from a hub id, a folder or a single file.

    Parameters
    ----------
    source : str or path, optional
        A hub id, a diffusers folder, a ``.safetensors``/``.ckpt`` file, or ``random:tiny`` /
        ``random:sd15`` (random weights in SD 1.x's layout, built in the user cache on first
        use). Defaults to :data:`~maskdiffusion.core.params.DEFAULT_MODEL`.
    device, dtype : str, optional
        See :func:`resolve_device` and :func:`resolve_dtype`.
    config : str or path, optional
        A diffusers-layout folder whose ``unet/``, ``vae/``, ``text_encoder/`` (and, if
        present, ``tokenizer/`` and ``scheduler/``) configs replace the bundled SD 1.x/2.x
        ones for a single checkpoint file.

    Raises
    ------
    ModelNotFoundError
        With one readable line (:class:`ModelFormatError` when the weights are unreadable).
    DeviceError, DTypeError
        For a device or precision that cannot be used here.

    Examples
    --------
    >>> sd = load_model("random:tiny", device="cpu", dtype="fp32")
    >>> sd.source, sd.precision
    ('random:tiny', 'fp32')
    >>> load_model("random:tiny", device="cpu", dtype="fp32") is sd
    True
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with _quiet():
        kind, where = locate_source(source)
    if config is not None and kind != "file":
        raise BadInputError("config= only applies to a single .safetensors/.ckpt file.")
    config_dir = resolve_config(config) if config is not None else None
    name = os.fspath(source) if kind == "random" else where
    key = (name, where, str(dev), str(dt), config_dir)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        with _quiet():
            if kind == "file":
                parts = load_single_file(Path(where), config_dir)
            else:
                parts = load_diffusers(where, hub=kind == "hub")
            parts.update(place_parts(parts["text_encoder"], parts["vae"], parts["unet"], dev, dt))
        model = SDModel(device=dev, dtype=dt, source=name, **parts)
        _CACHE[key] = model
        return model


def place_parts(text_encoder, vae, unet, device, dtype) -> dict:
    """The frozen parts on ``device``, ready to run: the VAE and the UNet in ``dtype`` and
    channels-last; the text encoder always in float32. It runs once per run, so its precision
    costs nothing per tile, and its embeddings in bf16 alone moved about 2.4% of the labels of
    a bf16 run away from fp32 (``docs/algorithm.md`` §5)."""
    import torch

    def frozen(module, dt):
        return module.to(device=device, dtype=dt).eval().requires_grad_(False)

    return {
        "text_encoder": frozen(text_encoder, torch.float32),
        "vae": frozen(vae, dtype).to(memory_format=torch.channels_last),
        "unet": frozen(unet, dtype).to(memory_format=torch.channels_last),
    }


def cached_weights(key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, kept beside the loaded models under ``key`` until :func:`clear_model_cache`
    (for weights that are loaded apart from the model: the TAESD encoder)."""
    with _LOCK:
        if key not in _CACHE:
            with _quiet():
                _CACHE[key] = build()
        return _CACHE[key]


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

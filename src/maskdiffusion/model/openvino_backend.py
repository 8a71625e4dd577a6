"""The per-tile forward through OpenVINO on a CPU (``docs/algorithm.md`` §5), exact to fp32.

Two parts are converted: the tile encoder (:mod:`.encoders`) and
:class:`~.capture.CapturedUNet`, the UNet truncated after its last captured layer with the
class-token attention maps and the two feature tensors as its outputs. The maps are computed
explicitly in the converted graph, exactly as :mod:`.capture` computes them (their logits feed
both the layer's softmax and the captured exp, so OpenVINO cannot fuse them into its attention
kernel). A conversion is made once per (weights, tile shape, precision, capture settings),
checked against PyTorch on its example input, and kept as IR in the cache folder
(:mod:`.ir_cache`) under the SHA-256 of the weights, so a changed checkpoint is converted again.
It is compiled with ``INFERENCE_PRECISION_HINT`` f32 (bf16 for a bf16 model): OpenVINO's own
default on a CPU with bf16 would round fp32 work to bf16.

The text encoder, the noise option and everything after the capture stay in PyTorch.
openvino is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import weakref
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import BadInputError
from .ir_cache import IRCache
from .sources import first_line

__all__ = ["AUTO_ENV", "CONVERSIONS", "EXTRA", "BackendError", "ConversionError", "OpenVinoTile",
           "openvino_installed", "prepare", "use_openvino", "weights_fingerprint"]

EXTRA = 'pip install "napari-maskdiffusion[openvino]"'
#: ``MASKDIFFUSION_OPENVINO=0`` keeps ``auto`` on PyTorch, as if OpenVINO were not installed.
AUTO_ENV = "MASKDIFFUSION_OPENVINO"
#: Changed whenever the converted graphs change, so that older cache entries are not used.
GRAPH_VERSION = 1
#: Largest difference from PyTorch on the example input, relative to the output's largest value.
_TOLERANCE = {"fp32": 1e-3, "bf16": 0.1}
#: Conversions made by this process (a batch reports them per worker).
CONVERSIONS = {"count": 0}

_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CORE = []


class BackendError(BadInputError):
    """OpenVINO was asked for where it cannot run, or could not convert the model (exit status 2)."""


class ConversionError(RuntimeError):
    """OpenVINO could not convert a part of the model, or its result differs from PyTorch's."""


def openvino_installed() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def use_openvino(choice: str, sd) -> bool:
    """Whether ``SegmentParams.backend`` ``choice`` runs ``sd`` through OpenVINO.

    ``auto``: where OpenVINO is installed, the model is on a CPU in fp32 or bf16, and
    :data:`AUTO_ENV` is not ``0``. ``openvino`` where it cannot run raises :class:`BackendError`.
    """
    if choice == "torch":
        return False
    on_cpu, precision_ok = sd.device.type == "cpu", sd.dtype in (torch.float32, torch.bfloat16)
    if choice == "auto":
        return on_cpu and precision_ok and os.environ.get(AUTO_ENV, "1") != "0" and openvino_installed()
    if not openvino_installed():
        raise BackendError(f"backend openvino needs OpenVINO, which is not installed here: {EXTRA}")
    if not on_cpu:
        raise BackendError(f"backend openvino runs on a CPU, the model is on {sd.device.type}: "
                           "choose backend torch or device cpu")
    if not precision_ok:
        raise BackendError(f"backend openvino runs fp32 or bf16, not {sd.precision}: choose dtype fp32")
    return True


class OpenVinoTile:
    """The compiled encoder and UNet for one tile shape, with infer requests of their own."""

    def __init__(self, encoder, unet):
        self._encoder, self._unet = encoder.create_infer_request(), unet.create_infer_request()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z0 (1, 4, h/8, w/8) of x (1, 3, h, w) in [-1, 1], float32."""
        return torch.from_numpy(self._encoder.infer([x.float().numpy()]).to_tuple()[0])

    def capture(self, z: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor):
        """What :class:`~.capture.CapturedUNet` returns, one prompt at a time (the IR has a
        batch of one): token maps stacked, features averaged over the prompts."""
        maps, coarse, fine = [], 0.0, 0.0
        z, t = z.float().numpy(), t.numpy()
        for e in embeddings.float().numpy():
            m, c, f = self._unet.infer([z, t, e[None]]).to_tuple()
            maps.append(m)
            coarse, fine = coarse + c, fine + f
        n = len(embeddings)
        return torch.from_numpy(np.concatenate(maps)), torch.from_numpy(coarse / n), torch.from_numpy(fine / n)


@dataclass
class _Part:
    """One module to convert, its example input, and the manifest its cache entry is keyed by."""

    label: str
    module: torch.nn.Module
    example: tuple
    manifest: dict

    @property
    def tile(self) -> str:
        return "x".join(map(str, self.manifest["tile"]))

    @property
    def entry(self) -> str:
        digest = hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:20]
        return f"{self.manifest['part']}-{self.tile}-{self.manifest['precision']}-{digest}"


def prepare(sd, encoder, unet, tile_hw: tuple[int, int], embeddings: torch.Tensor,
            timestep: int) -> Generator[str, None, OpenVinoTile]:
    """The encoder and the captured UNet for tiles of ``tile_hw``, compiled; each converted
    first where neither this process nor the cache folder holds it, with a message before and
    after each conversion. Compiled parts are kept for ``sd``'s lifetime.

    Raises :class:`ConversionError` (again on later calls for ``sd``, without converting again).
    """
    parts = _parts(sd, encoder, unet, tile_hw, embeddings, timestep)
    compiled_by_entry = _COMPILED.setdefault(sd, {})
    threads = torch.get_num_threads()
    compiled = []
    for i, part in enumerate(parts, start=1):
        key = (part.entry, threads)
        if key not in compiled_by_entry:
            try:
                compiled_by_entry[key] = yield from _compile(part, sd.precision, threads, f"{i} of {len(parts)}")
            except ConversionError as err:
                compiled_by_entry[key] = err
        if isinstance(compiled_by_entry[key], ConversionError):
            raise compiled_by_entry[key]
        compiled.append(compiled_by_entry[key])
    return OpenVinoTile(*compiled)


def _parts(sd, encoder, unet, tile_hw, embeddings, timestep) -> list[_Part]:
    from .. import __version__

    h, w = tile_hw
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, h, w, generator=generator) * 2 - 1
    z = torch.randn(1, 4, h // 8, w // 8, generator=generator)
    e = embeddings[:1].float()
    versions = {"maskdiffusion": __version__, "graph": GRAPH_VERSION, **_library_versions()}
    base = {"tile": [h, w], "precision": sd.precision, "versions": versions}
    encoder_part = _Part(
        encoder.label, encoder, (x,),
        {**base, "part": "encoder", "module": type(encoder).__name__, "config": _config(encoder.weights),
         "weights": weights_fingerprint(encoder.weights), "input": [1, 3, h, w]})
    unet_part = _Part(
        "UNet", unet, (z, torch.tensor(timestep), e),
        {**base, "part": "unet", "config": _config(unet.unet), "weights": weights_fingerprint(unet.unet),
         "input": list(z.shape), "embeddings": list(e.shape), "attention": unet.mode,
         "layers": list(unet.attention_blocks), "features": list(unet.feature_modules)})
    return [encoder_part, unet_part]


def _compile(part: _Part, precision: str, threads: int, which: str) -> Generator[str, None, object]:
    """The compiled part: from the cache, or converted (and kept there)."""
    config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
              "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads}
    cache = IRCache()
    with cache.locked(part.entry):
        model = cache.read(part.entry, part.manifest)
        if model is not None:
            try:
                return _core().compile_model(model, "CPU", config)
            except Exception:  # an entry OpenVINO reads but cannot compile: convert it again
                cache.remove(part.entry)
        kept = f"kept in {cache.folder}" if cache.writable else "kept in memory only"
        yield (f"OpenVINO: converting the {part.label} for {part.tile} tiles ({which}); this happens once per "
               f"model and tile size, the result is {kept}")
        start = time.perf_counter()
        try:
            module = _fp32(part.module)
            model = _convert(module, part.example)
            compiled = _core().compile_model(model, "CPU", config)
            _check(compiled, module, part, precision)
        except ConversionError:
            raise
        except Exception as err:
            raise ConversionError(f"the {part.label}: {first_line(err)}") from err
        CONVERSIONS["count"] += 1
        cache.write(part.entry, part.manifest, model)
        yield f"OpenVINO: {part.label} converted and checked against PyTorch in {time.perf_counter() - start:.0f} s"
        return compiled


def _fp32(module: torch.nn.Module) -> torch.nn.Module:
    """``module``, or a float32 copy of it (the exact upcast of its bf16 weights): OpenVINO
    2026.4 computes NaN from a graph traced in bf16; the bf16 precision hint does the rest."""
    if all(p.dtype == torch.float32 for p in module.parameters()):
        return module
    import copy

    return copy.deepcopy(module).float()


def _convert(module: torch.nn.Module, example: tuple):
    import openvino

    types = {torch.float32: openvino.Type.f32, torch.int64: openvino.Type.i64}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False, strict=False)
        return openvino.convert_model(traced, example_input=example,
                                      input=[(list(x.shape), types[x.dtype]) for x in example])


def _check(compiled, module: torch.nn.Module, part: _Part, precision: str) -> None:
    """The compiled part's outputs on the example input equal those of the ``module`` it was
    converted from (to ``_TOLERANCE``)."""
    with torch.inference_mode():
        expected = module(*part.example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = compiled([x.numpy() for x in part.example]).to_tuple()
    if len(got) != len(expected):
        raise ConversionError(f"the {part.label} has {len(got)} outputs, PyTorch's {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        e = e.float().numpy()
        if g.shape != e.shape:
            raise ConversionError(f"the {part.label}'s output {i} has shape {g.shape}, PyTorch's {e.shape}")
        scale = max(float(np.abs(e).max()), 1e-30)
        error = float(np.nan_to_num(np.abs(g - e), nan=np.inf).max()) / scale
        if error > _TOLERANCE[precision]:
            raise ConversionError(f"the {part.label}'s output {i} differs from PyTorch's by {error:.1e} of its "
                                  "largest value")


def weights_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's weights (names, shapes, dtypes, bytes), once per module object."""
    if module not in _FINGERPRINTS:
        digest = hashlib.sha256()
        for name, tensor in module.state_dict().items():
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        _FINGERPRINTS[module] = digest.hexdigest()
    return _FINGERPRINTS[module]


def _config(module) -> dict:
    """A diffusers model's configuration, without its bookkeeping (``_name_or_path``...)."""
    return json.loads(json.dumps({k: v for k, v in dict(module.config).items() if not k.startswith("_")},
                                 default=str))


def _library_versions() -> dict:
    import diffusers
    import openvino

    return {"openvino": openvino.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__}


def _core():
    if not _CORE:
        import openvino

        _CORE.append(openvino.Core())
    return _CORE[0]

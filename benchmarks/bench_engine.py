"""Engine cost against the bare model cost, and memory growth with image size.

1. Time: full SD 1.5 sizes with random weights (the cost is the real one), one 512×512 tile,
   six Potsdam classes. The engine's time is divided by the bare cost measured in the same run:
   VAE encode + text encode + one complete UNet forward with diffusers' own attention.
   Goal: ≤ 1.10×.
2. Memory: peak resident memory of a fresh process (after loading and one warm-up tile) while
   segmenting 1024² and 4096² random images with the tiny model, against the bytes of the input
   and output arrays. Goal: the growth is the arrays, nothing more. Linux only (/proc).
   ``memory_of_commands``: ``maskdiffusion segment`` itself on a 12000² random GeoTIFF, in a
   fresh process with its model loaded and warm, once per output (``--out`` .tif and .png,
   ``--confidence``, ``--scores``, ``--polygons``, ``--coco``, ``--quiet``) at ``--scale`` 0.1,
   and ``--out`` .tif at 0.5: the peak growth over the bytes of the input and of the arrays the
   result holds (labels, and the confidence or the scores when asked). Goal: ≤ 1.3.

   ``work`` counts the FLOPs of one tile and divides them by this machine's large-matmul rate
   at the same precision: ``floor_s`` is a floor under the seconds per tile for this work.

3. Precision: the default precision (``--dtype auto``: bf16 on a CPU with native bf16, fp16 on a
   GPU) against fp32 in the same run: seconds per tile of each (``tile_s_default``,
   ``tile_s_fp32``) and the share of pixels whose label agrees (``label_agreement_default_vs_fp32``,
   on ``--images`` synthetic Potsdam-like tiles).

4. Backends and encoders on a CPU, fp32, one SD 1.5-sized model in one process: seconds per 512²
   tile through PyTorch (``tile_s_torch_fp32``), through OpenVINO (``tile_s_openvino_fp32``) and
   through OpenVINO with TAESD as the encoder (``tile_s_fast_encoder``; random TAESD weights of
   its real size), timed interleaved; OpenVINO's conversion (``conversion_s``: the first run
   less a tile, into a fresh cache folder) and a start from its cache (``start_from_cache_s``:
   hashing the weights, reading and compiling the IR); the share of pixels
   whose label agrees between OpenVINO and PyTorch (``label_agreement_openvino_vs_torch``, on
   ``--images`` tiles); what ``auto`` picks here (``default_dtype``, ``default_backend``); and
   what an ISPRS Potsdam tile (6000², tile 512, overlap 64) costs at ``--scale`` 1 and 0.5.

Prints one JSON object. ``--device cuda`` times the GPU per-tile cost.
Usage: python benchmarks/bench_engine.py [--repeat 3] [--skip-memory] [--skip-scale-memory] [--side 12000]
       [--device cpu] [--skip-backends] [--images 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

CLASSES = "preset:potsdam6"


def build_sd15_in_memory(device, dtype):
    """SD 1.5-sized random model, in memory (no 4 GB write to disk)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from maskdiffusion.model.loading import SDModel, place_parts
    from maskdiffusion.model.random_sd import SIZES
    from maskdiffusion.model.tokenizer import build_clip_tokenizer

    s = SIZES["sd15"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, layers_per_block=2, block_out_channels=s["unet_channels"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=s["cross_dim"], attention_head_dim=s["heads"], norm_num_groups=s["norm_groups"],
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=s["vae_channels"], layers_per_block=2, latent_channels=4,
        norm_num_groups=s["norm_groups"], sample_size=512, scaling_factor=0.18215,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=s["cross_dim"], intermediate_size=s["text_ffn"],
        num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"], max_position_embeddings=77,
        hidden_act="quick_gelu",
    ))
    tok = build_clip_tokenizer(tempfile.mkdtemp())
    parts = place_parts(text, vae, unet, torch.device(device), dtype)  # as load_model does
    return SDModel(tok, **parts, device=torch.device(device), dtype=dtype, source="random:sd15",
                   scheduler_config={})


def bare_cost(sd, image, prompt):
    """VAE encode + text encode + one full UNet forward, diffusers' default attention."""
    import torch

    with torch.inference_mode():
        ids = sd.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids.to(sd.device)
        emb = sd.text_encoder(ids)[0].to(sd.dtype)
        x = torch.from_numpy(image).to(sd.device).permute(2, 0, 1)[None].to(sd.dtype) / 127.5 - 1
        z = sd.vae.encode(x).latent_dist.mean * sd.vae.config.scaling_factor
        sd.unet(z, 0, encoder_hidden_states=emb)


def _sync(device):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_it(fn, device, repeat):
    times = []
    for _ in range(repeat):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times


def _images(n: int) -> list[np.ndarray]:
    """A few 512² test images: synthetic Potsdam-like tiles (structure the features can follow)."""
    from maskdiffusion.geo.synthetic import make_potsdam_like_tile

    return [np.ascontiguousarray(make_potsdam_like_tile(512, seed=s)[0][..., :3]) for s in range(n)]


def timing(device: str, dtype_name: str, repeat: int, sd=None) -> dict:
    """Seconds per 512² tile at ``dtype_name`` through PyTorch against the bare cost, in one process."""
    import torch

    from maskdiffusion import segment
    from maskdiffusion.core.classes import preset_classes

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    sd = sd or build_sd15_in_memory(device, dtype)
    image = _images(1)[0]
    prompt = " and ".join(c.prompts[0] for c in preset_classes("potsdam6"))
    run_engine = lambda: segment(image, CLASSES, sd, backend="torch")  # noqa: E731
    run_bare = lambda: bare_cost(sd, image, prompt)  # noqa: E731
    run_bare(), run_engine()  # warm-up
    bare, engine = [], []
    for _ in range(repeat):  # interleaved, so drifts in machine load hit both alike
        bare += time_it(run_bare, device, 1)
        engine += time_it(run_engine, device, 1)
    b, e = statistics.median(bare), statistics.median(engine)
    return {
        "device": device, "dtype": dtype_name, "tile": 512, "classes": 6, "repeat": repeat,
        "bare_seconds_median": round(b, 3), "engine_seconds_median": round(e, 3),
        "engine_over_bare": round(e / b, 3),
        "bare_seconds": [round(t, 3) for t in bare], "engine_seconds": [round(t, 3) for t in engine],
        "work": work_floor(run_engine, device, dtype, e),
    }


def matmul_rate(device: str, dtype, side: int = 2048, repeat: int = 5) -> float:
    """FLOP/s of one large square matmul at ``dtype``: about the best this machine does at it."""
    import torch

    a, b = (torch.randn(side, side, device=device).to(dtype) for _ in range(2))
    a @ b
    best = min(time_it(lambda: a @ b, device, repeat))
    return 2 * side**3 / best


def work_floor(run_engine, device: str, dtype, tile_s: float) -> dict:
    """What one tile computes (convolutions, matmuls and attention, as torch counts them), per
    model part, against this machine's large-matmul rate at the same precision: the seconds no
    scheduling of the same work can beat (``floor_s``), and the share of that rate we reach."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run_engine()
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    rate = matmul_rate(device, dtype)
    parts = {name: round(sum(by_module.get(module, {}).values()) / 1e9, 1)
             for name, module in (("vae_encoder", "Encoder"), ("text_encoder", "CLIPTextModel"),
                                  ("unet", "UNet2DConditionModel"))}
    return {"gflop_per_tile": round(total / 1e9, 1), "gflop_by_part": parts,
            "matmul_gflop_s": round(rate / 1e9, 1), "floor_s": round(total / rate, 2),
            "share_of_matmul_rate": round(total / rate / tile_s, 3)}


def agreement(device: str, dtype_name: str, n_images: int) -> dict:
    """Share of pixels whose label at ``dtype_name`` equals the fp32 label, same weights."""
    import torch

    from maskdiffusion import segment

    images = _images(n_images)
    labels = {}
    for name in ("fp32", dtype_name):
        torch.manual_seed(0)
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]
        sd = build_sd15_in_memory(device, dtype)
        labels[name] = [segment(img, CLASSES, sd, backend="torch").labels for img in images]
        del sd
    shares = [float((a == b).mean()) for a, b in zip(labels["fp32"], labels[dtype_name])]
    return {"images": n_images, "per_image": [round(s, 4) for s in shares], "mean": round(float(np.mean(shares)), 4)}


def backends(device: str, repeat: int, n_images: int, cache_dir: str | None = None) -> dict:
    """Section 4: PyTorch, OpenVINO and TAESD on one fp32 SD 1.5-sized model, timed interleaved."""
    import os
    import tempfile

    import torch

    from maskdiffusion import segment
    from maskdiffusion.core.tiling import tile_grid
    from maskdiffusion.model import openvino_backend
    from maskdiffusion.model.cache_folder import CACHE_ENV

    os.environ[CACHE_ENV] = cache_dir or tempfile.mkdtemp(prefix="bench-cache-")  # the user's cache untouched
    sd = build_sd15_in_memory(device, torch.float32)
    taesd = _random_taesd(tempfile.mkdtemp())
    image = _images(1)[0]
    messages = []
    start = time.perf_counter()
    segment(image, CLASSES, sd, backend="openvino", progress=lambda s: s.stage == "load" and messages.append(s.message))
    first_run = time.perf_counter() - start
    segment(image, CLASSES, sd, backend="openvino", encoder=taesd)  # converts TAESD's encoder
    segment(image, CLASSES, sd, backend="torch", encoder=taesd)  # warm-up
    configs = {"torch_fp32": {"backend": "torch"}, "openvino_fp32": {"backend": "openvino"},
               "fast_encoder": {"backend": "openvino", "encoder": taesd},
               "fast_encoder_torch": {"backend": "torch", "encoder": taesd}}
    times = {name: [] for name in configs}
    for _ in range(repeat):  # interleaved, so drifts in the machine's load hit all alike
        for name, params in configs.items():
            times[name] += time_it(lambda params=params: segment(image, CLASSES, sd, **params), device, 1)
    out = {name: {"median": round(statistics.median(t), 3), "seconds": [round(x, 3) for x in t]}
           for name, t in times.items()}
    out["conversion_s"] = round(first_run - out["openvino_fp32"]["median"], 1)
    out["conversion_messages"] = [m for m in messages if m.startswith("OpenVINO")]
    openvino_backend._COMPILED.pop(sd, None)  # as a new process would: hash the weights, read the IR, compile it
    openvino_backend._FINGERPRINTS.clear()
    start = time.perf_counter()
    segment(image, CLASSES, sd, backend="openvino")
    out["start_from_cache_s"] = round(time.perf_counter() - start - out["openvino_fp32"]["median"], 1)
    shares = []
    for img in _images(n_images):
        a, b = (segment(img, CLASSES, sd, backend=backend).labels for backend in ("openvino", "torch"))
        shares.append(float((a == b).mean()))
    out["agreement"] = {"images": n_images, "per_image": [round(x, 5) for x in shares],
                        "mean": round(float(np.mean(shares)), 5)}
    out["default_backend"] = "openvino" if openvino_backend.use_openvino("auto", sd) else "torch"
    tiles = {scale: len(tile_grid((round(6000 * scale),) * 2, 512, 64)) for scale in (1.0, 0.5)}
    per_tile = {k: out[k]["median"] for k in ("torch_fp32", "openvino_fp32", "fast_encoder")}
    out["potsdam_minutes"] = {f"scale_{scale}": {"tiles": n, **{k: round(n * v / 60, 1) for k, v in per_tile.items()}}
                              for scale, n in tiles.items()}
    return out


def _random_taesd(folder: str) -> str:
    """TAESD's configuration (diffusers' AutoencoderTiny defaults) with random weights, saved."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny().save_pretrained(folder)
    return folder


# Linux: writing 5 to clear_refs resets the peak (VmHWM), so loading's transient peak is not counted.
_MEMORY_CHILD = """
import sys, numpy as np
from maskdiffusion import segment
from maskdiffusion.model.loading import load_model
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
side = int(sys.argv[1]); model = sys.argv[2]
sd = load_model(model, device="cpu")
segment(np.zeros((512, 512, 3), np.uint8), "road,tree", sd)   # everything loaded and warm
open("/proc/self/clear_refs", "w").write("5")
base = kb("VmRSS:")
img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
r = segment(img, "road,building,tree", sd)
peak = kb("VmHWM:")
print(base * 1024, peak * 1024, img.nbytes, r.labels.nbytes + r.confidence.nbytes + r.attention.nbytes)
"""


def memory(sides=(1024, 4096)) -> dict:
    import tempfile

    from maskdiffusion.model.random_sd import build_random_sd

    folder = build_random_sd(tempfile.mkdtemp() + "/tiny", "tiny")
    rows = {}
    for side in sides:
        out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(side), str(folder)],
                             capture_output=True, text=True, check=True).stdout.split()
        base, peak, image_bytes, output_bytes = map(int, out[-4:])
        rows[side] = {"growth_mb": round((peak - base) / 2**20, 1), "input_mb": round(image_bytes / 2**20, 1),
                      "outputs_mb": round(output_bytes / 2**20, 1)}
    a, b = rows[sides[0]], rows[sides[-1]]
    arrays = (b["input_mb"] + b["outputs_mb"]) - (a["input_mb"] + a["outputs_mb"])
    return {
        "per_side": rows,
        f"growth_{sides[0]}_to_{sides[-1]}_mb": round(b["growth_mb"] - a["growth_mb"], 1),
        "of_which_input_and_output_arrays_mb": round(arrays, 1),
        "growth_over_arrays": round((b["growth_mb"] - a["growth_mb"]) / arrays, 3),
    }


# ``maskdiffusion segment`` itself (its ``main``), in a fresh process, after the model it loads was
# loaded and warmed (so loading is not counted): the peak after the command (VmHWM, reset once).
_COMMAND_MEMORY_CHILD = """
import sys, numpy as np
from maskdiffusion import segment
from maskdiffusion.cli import main
from maskdiffusion.model.loading import load_model
def kb(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
model, argv = sys.argv[1], sys.argv[2:]
sd = load_model(model, "auto", None)   # what the command loads: cached, so loading is not counted
segment(np.zeros((512, 512, 3), np.uint8), "road,tree", sd, return_confidence=False)  # a full tile, warm
open("/proc/self/clear_refs", "w").write("5")
base = kb("VmRSS:")
code = main(argv)
print(code, base * 1024, kb("VmHWM:") * 1024)
"""

#: The outputs of ``segment`` measured: name -> (extra arguments, bytes per pixel of the arrays
#: the result holds for them besides the uint8 labels: confidence float32, 3 class scores float32).
COMMAND_OUTPUTS = {
    "tif": ([], 0),
    "tif --quiet": (["--quiet"], 0),
    "png": ([], 0),
    "confidence": (["--confidence", "conf.tif"], 4),
    "scores": (["--scores", "scores.npy"], 12),
    "polygons": (["--polygons", "seg.gpkg"], 0),
    "coco": (["--coco", "seg.json"], 0),
}


def _random_geotiff(path: str, side: int) -> None:
    """A side² RGB uint8 GeoTIFF of noise, written in bands of rows (never whole in memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    rng = np.random.default_rng(0)
    profile = {"driver": "GTiff", "width": side, "height": side, "count": 3, "dtype": "uint8", "tiled": True,
               "crs": "EPSG:32633", "transform": from_origin(366000, 5808000, 0.05, 0.05)}
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, side, 1024):
            h = min(1024, side - y)
            dst.write(rng.integers(0, 256, (3, h, side), dtype=np.uint8), window=Window(0, y, side, h))


def memory_of_commands(side: int = 12000, runs=None) -> dict:
    """Peak growth of ``maskdiffusion segment`` on a side² RGB GeoTIFF (3 classes), per output
    and scale, over the bytes of its input and of the arrays the result holds (labels, and the
    confidence or scores when asked)."""
    import shutil
    import tempfile
    from pathlib import Path

    from maskdiffusion.model.random_sd import build_random_sd

    folder = Path(tempfile.mkdtemp())
    model = build_random_sd(folder / "tiny", "tiny")
    image = folder / f"random_{side}.tif"
    _random_geotiff(str(image), side)
    runs = runs or [(0.1, name) for name in COMMAND_OUTPUTS] + [(0.5, "tif"), (0.5, "tif --quiet")]
    rows = {}
    for scale, name in runs:
        extra, bytes_per_pixel = COMMAND_OUTPUTS[name]
        out = folder / "out"
        out.mkdir()
        argv = ["segment", str(image), "--classes", "road,building,tree", "--model", str(model), "--scale", str(scale),
                "--out", str(out / ("seg.png" if name == "png" else "seg.tif")),
                *[str(out / a) if a.endswith((".tif", ".npy", ".gpkg", ".json")) else a for a in extra]]
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", _COMMAND_MEMORY_CHILD, str(model), *argv],
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        shutil.rmtree(out)
        if result.returncode != 0:
            rows[f"{name} at {scale}"] = {"error": result.stderr.strip().splitlines()[-1:]}
            continue
        code, base, peak = map(int, result.stdout.split()[-3:])
        arrays = side * side * (3 + 1 + bytes_per_pixel)
        rows[f"{name} at {scale}"] = {"exit": code, "seconds": round(seconds, 1), "arrays_mb": round(arrays / 2**20),
                                      "peak_growth_mb": round((peak - base) / 2**20),
                                      "peak_over_arrays": round((peak - base) / arrays, 3)}
    shutil.rmtree(folder)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, choices=["fp32", "fp16", "bf16"],
                   help="the precision timed as the default (default: what --dtype auto picks here)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--images", type=int, default=4, help="images for the label agreements (precision, backend)")
    p.add_argument("--skip-backends", action="store_true", help="skip section 4 (OpenVINO, TAESD)")
    p.add_argument("--cache-dir", help="section 4's cache folder (default: a new one, so that the conversion is "
                                       "timed); one that holds this model's conversion skips it")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-scale-memory", action="store_true")
    p.add_argument("--side", type=int, default=12000, help="image side of the memory-at-scale scenario")
    p.add_argument("--skip-timing", action="store_true")
    a = p.parse_args()
    import torch

    from maskdiffusion.model.loading import resolve_dtype

    torch.set_grad_enabled(False)
    default = a.dtype or {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[
        resolve_dtype("auto", a.device)]
    out = {"default_dtype": default, "torch_threads": torch.get_num_threads()}
    if not a.skip_backends and a.device == "cpu":
        out["backends"] = b = backends(a.device, a.repeat, a.images, a.cache_dir)
        out.update(tile_s_torch_fp32=b["torch_fp32"]["median"],
                   tile_s_openvino_fp32=b["openvino_fp32"]["median"], tile_s_fast_encoder=b["fast_encoder"]["median"],
                   label_agreement_openvino_vs_torch=b["agreement"]["mean"], conversion_s=b["conversion_s"],
                   default_backend=b["default_backend"])
    if not a.skip_timing:
        out["timing_default"] = timing(a.device, default, a.repeat)
        out["tile_s_default"] = out["timing_default"]["engine_seconds_median"]
        if default != "fp32":
            out["timing_fp32"] = timing(a.device, "fp32", a.repeat)
            out["label_agreement"] = agreement(a.device, default, a.images)
        else:
            out["timing_fp32"] = out["timing_default"]
            out["label_agreement"] = {"images": 0, "mean": 1.0}
        out["tile_s_fp32"] = out["timing_fp32"]["engine_seconds_median"]
        out["label_agreement_default_vs_fp32"] = out["label_agreement"]["mean"]
        out["speedup_default_over_fp32"] = round(out["tile_s_fp32"] / out["tile_s_default"], 2)
    if not a.skip_memory:
        out["memory"] = memory()
    if not a.skip_scale_memory:
        out["memory_of_commands"] = memory_of_commands(a.side)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

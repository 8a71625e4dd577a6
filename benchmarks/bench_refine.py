"""Refinement cost after the model run: time of one refinement and size of the cache.

Refinement never calls the model, so no model is needed: the features are synthetic, C = 2880
channels (SD 1.x) on the class-map grid (one cell = 16 px): random unit vectors, one per
region of a random region map plus per-cell noise, so that classes form regions as in a real
image; the class maps are smoothed region indicators. They go through the default reduction
(``dims="auto"``; these easy features need only 16 dims, so D = 256 and no reduction at all,
C = 2880 in float16, are timed too), then 20 stroke dabs are painted and
:meth:`maskdiffusion.session.Session.refine` is timed (best and median of ``--repeat``), and
the assignment with the per-pixel confidence. Goals (issue 5): < 1 s at 2048², < 5 s at 6000²,
cache of a 6000² tile ≤ 1 GB.

Prints one JSON object (also written to ``--out``).
Usage: python benchmarks/bench_refine.py [--sizes 2048 6000] [--dims auto 256 full] [--repeat 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

C = 2880
K = 6
STRIDE = 16


def synthetic_run(size: int, seed: int = 0):
    """(features float16 (C, g, g), attention (K, g, g), regions (g, g)) for a size² image."""
    import torch
    from scipy import ndimage

    g = -(-size // STRIDE)
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((K, g, g)).astype(np.float32), (0, 4, 4))
    regions = field.argmax(0)
    torch.manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(K, C), dim=1)
    flat = torch.from_numpy(regions.ravel())
    feats = np.empty((C, g * g), np.float16)
    for s in range(0, g * g, 8192):
        e = min(g * g, s + 8192)
        f = means[flat[s:e]] + 0.05 * torch.randn(e - s, C)
        feats[:, s:e] = torch.nn.functional.normalize(f, dim=1).T.numpy()
    attention = np.stack([ndimage.gaussian_filter((regions == k).astype(np.float32), 2) for k in range(K)])
    attention = attention * (0.6 + 0.4 * rng.random(attention.shape, np.float32))
    attention /= attention.reshape(K, -1).max(1)[:, None, None]
    return feats.reshape(C, g, g), attention.astype(np.float32), regions


def strokes(labels: np.ndarray, n: int, radius: int, seed: int = 1) -> np.ndarray:
    """``labels`` (values 1..K) with ``n`` dabs of another class painted on it."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    H, W = labels.shape
    for i in range(n):
        y, x = int(rng.integers(radius, H - radius)), int(rng.integers(radius, W - radius))
        yy, xx = np.ogrid[-radius: radius + 1, -radius: radius + 1]
        disk = yy**2 + xx**2 <= radius**2
        window = out[y - radius: y + radius + 1, x - radius: x + radius + 1]
        window[disk] = (window[radius, radius] + i % (K - 1)) % K + 1
    return out


def _dims(text: str):
    return None if text == "full" else text if text == "auto" else int(text)


def bench(size: int, repeat: int, dims_options) -> dict:
    from maskdiffusion.core.classes import preset_classes
    from maskdiffusion.core.marks import Marks
    from maskdiffusion.core.params import SegmentParams
    from maskdiffusion.core.refine import assign, refined_scores
    from maskdiffusion.core.result import SegmentationResult
    from maskdiffusion.session import Session

    t = time.perf_counter()
    feats, attention, regions = synthetic_run(size)
    made_s = time.perf_counter() - t
    labels = np.kron(regions + 1, np.ones((STRIDE, STRIDE), np.uint8))[:size, :size].astype(np.uint8)
    result = SegmentationResult(labels=labels, classes=preset_classes("potsdam6"),
                                confidence=np.zeros(labels.shape, np.float32), attention=attention,
                                attention_stride=float(STRIDE), params=SegmentParams(), features=feats)
    g = feats.shape[1]
    goal = 1.0 if size <= 2048 else 5.0
    out = {"size": size, "grid": [g, g], "classes": K, "source_dims": C, "goal_s": goal,
           "synthetic_features_s": round(made_s, 2), "runs": []}
    for dims in dims_options:
        t = time.perf_counter()
        session = Session.from_result(result, dims=_dims(dims))
        reduce_s = time.perf_counter() - t
        painted = strokes(np.asarray(session.labels), 20, 24)
        times, conf_times = [], []
        for _ in range(repeat):
            session.history.clear()
            session.labels = labels.copy()
            session.edited = Marks(session.labels.shape)
            session.edit(painted)
            t = time.perf_counter()
            session.refine()
            times.append(time.perf_counter() - t)
        state = session.state
        edited = np.asarray(session.edited)
        scores = refined_scores(state, np.asarray(session.labels), edited)
        for _ in range(repeat):
            t = time.perf_counter()
            assign(scores, state.shape, state.stride, labels=np.asarray(session.labels), fixed=edited, confidence=True)
            conf_times.append(time.perf_counter() - t)
        out["runs"].append({
            "dims_option": dims,
            "reduction": state.reduction,
            "reduction_s": round(reduce_s, 2),
            "cache_bytes": state.nbytes,
            "edited_pixels": int(session.edited.sum()),
            "refine_s_best": round(min(times), 3),
            "refine_s_median": round(statistics.median(times), 3),
            "assign_with_confidence_s_best": round(min(conf_times), 3),
            "meets_goal": min(times) < goal,
        })
        del session, state, scores
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 6000])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dims", nargs="+", default=["auto", "256", "full"],
                   help="feature reductions to time: auto, an int D, full (no reduction)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    report = {
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "results": [bench(s, args.repeat, args.dims) for s in args.sizes],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

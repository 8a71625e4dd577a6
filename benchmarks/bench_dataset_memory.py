"""Do corrections teach the next drafts? The class memory of a dataset (``docs/algorithm.md`` §4.7).

A synthetic dataset: ``--images`` images of ``--size``² px, each a mosaic of textured regions
(Voronoi cells) whose class follows colour and texture: water (blue, smooth), grass (green,
fine grain), sand (pale, medium grain), forest (dark green, coarse blobs), with exact ground
truth. A simulated annotator walks the images in order and corrects each draft to the truth;
before that, image n is drafted

- by the paper (no memory), and
- with the memory of images 1…n−1 (what ``maskdiffusion.dataset`` does),

and the benchmark records each draft's mIoU and the pixels the annotator must change.

(a) **The real pipeline** (``Project`` → ``draft`` → ``save_labels``) with the tiny random-weight
model. Random weights give features that hardly carry a class from one image to the next, so
it also measures the memory alone: the mIoU of image n's draft from the exact class means of
images 1…n−1 (a_k = 1, no attention at all).
(b) **The weighting on features that carry the classes across images**, without a model: the
same label maps, features f̂ simulated in 2880 dimensions as a class direction plus a per-image
shift plus noise (what a trained model's features are assumed to be), class maps as the true
regions blurred, mixed with a random field and with another class's (a mediocre text
attention); drafts through ``RefineState`` and ``apply_memory`` (the path batch drafts take),
for several n0. (b) measures no model: it shows what the weighting does.

Writes a JSON of every figure (``--out``) and the plot ``docs/dataset_memory.png``.
Usage: python benchmarks/bench_dataset_memory.py [--images 20] [--size 256] [--model random:tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

CLASSES = ["water", "grass", "sand", "forest"]
MEAN = np.array([[20, 40, 200], [60, 200, 40], [240, 230, 200], [20, 60, 20]], np.float32)
GRAIN = np.array([3, 60, 8, 70], np.float32)  # texture amplitude
SCALE = np.array([8, 0.7, 3, 6], np.float32)  # texture size (px)
STRIDE = 16
#: The class each class's simulated text attention half-confuses it with (water with forest, ...).
CONFUSED = [3, 2, 1, 0]


def make_image(seed: int, size: int, regions: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image and its (size, size) labels 1..4, every class present."""
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, size, (regions, 2))
    classes = rng.permutation(np.arange(regions) % len(CLASSES))
    yy, xx = np.mgrid[:size, :size]
    labels = classes[((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2).argmin(-1)]
    image = MEAN[labels] * rng.uniform(0.9, 1.1)
    for k in range(len(CLASSES)):
        texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), SCALE[k])
        image[labels == k] += (GRAIN[k] * texture / texture.std())[labels == k][:, None]
    return np.clip(image, 0, 255).astype(np.uint8), (labels + 1).astype(np.uint8)


def miou(pred: np.ndarray, truth: np.ndarray) -> float:
    from maskdiffusion.core.metrics import confusion_matrix, scores_from_confusion

    cm = confusion_matrix(pred.astype(np.int64) - 1, truth.astype(np.int64) - 1, len(CLASSES))
    return float(scores_from_confusion(cm, CLASSES)["miou"])


def real_pipeline(dataset, folder: Path, model_source: str) -> dict:
    """(a): Project/draft/save_labels with and without the memory, and the memory alone."""
    from PIL import Image

    from maskdiffusion.core.memory import ClassMemory
    from maskdiffusion.core.params import SegmentParams
    from maskdiffusion.core.refine import assign
    from maskdiffusion.dataset import Project, draft
    from maskdiffusion.engine import drain
    from maskdiffusion.model.loading import load_model

    images = folder / "images"
    images.mkdir()
    for n, (image, _) in enumerate(dataset):
        Image.fromarray(image).save(images / f"image_{n:02d}.png")
    size = dataset[0][0].shape[0]
    params = SegmentParams(tile_size=size, overlap=0)
    model = load_model(model_source)
    curves = {"paper_miou": [], "memory_miou": [], "alone_miou": [], "paper_changes": [], "memory_changes": [],
              "draft_s": [], "pixels": size * size}
    oracle = ClassMemory(n0=1e-9)
    with Project.create(folder / "memory", images, CLASSES, params=params, model=model_source) as learning, \
            Project.create(folder / "paper", images, CLASSES, params=params, model=model_source,
                           memory=False) as paper:
        for n, (_, truth) in enumerate(dataset):
            start = time.perf_counter()
            mine = drain(draft(learning, n, model))
            curves["draft_s"].append(round(time.perf_counter() - start, 2))
            plain = drain(draft(paper, n, model))
            curves["memory_miou"].append(miou(mine.labels, truth))
            curves["paper_miou"].append(miou(plain.labels, truth))
            curves["memory_changes"].append(int((mine.labels != truth).sum()))
            curves["paper_changes"].append(int((plain.labels != truth).sum()))
            state = plain.state
            if oracle.images:
                best = assign(np.einsum("kc,chw->khw", oracle.means(CLASSES)[0], state.features.astype(np.float32)),
                              state.shape, state.stride)
                curves["alone_miou"].append(miou(best, truth))
            else:
                curves["alone_miou"].append(None)
            oracle.learn(str(n), state, truth)
            learning.save_labels(n, truth, status="done")
            print(f"(a) image {n + 1}: mIoU paper {curves['paper_miou'][-1]:.3f}, memory "
                  f"{curves['memory_miou'][-1]:.3f}; pixels to change {curves['paper_changes'][-1]} / "
                  f"{curves['memory_changes'][-1]}", file=sys.stderr)
    return curves


def simulated_features(dataset, n0_values, dims: int = 2880, seed: int = 0) -> dict:
    """(b): the memory's weighting on simulated features that carry the classes across images."""
    from maskdiffusion.core.classes import as_class_specs
    from maskdiffusion.core.memory import ClassMemory, apply_memory
    from maskdiffusion.core.refine import (
        RefineState,
        assign,
        class_prototypes,
        cover_fractions,
        grid_scores,
        refined_scores,
    )

    rng = np.random.default_rng(seed)
    K = len(CLASSES)
    specs = tuple(as_class_specs(CLASSES))
    common = rng.standard_normal(dims)
    directions = rng.standard_normal((K, dims))

    def unit(x):
        return x / np.linalg.norm(x, axis=0, keepdims=True)

    states = []
    for image, truth in dataset:
        gh = gw = image.shape[0] // STRIDE
        cover = cover_fractions(truth, K, (gh, gw), STRIDE)  # (K, gh, gw)
        shift = rng.standard_normal(dims)
        noise = rng.standard_normal((dims, gh, gw))
        f = (1.5 * common / np.sqrt(dims))[:, None, None] + np.einsum("kc,khw->chw", directions, cover) / np.sqrt(dims)
        f = unit(f + 0.8 * (shift / np.sqrt(dims))[:, None, None] + 1.2 * noise / np.sqrt(dims)).astype(np.float32)
        field = ndimage.gaussian_filter(rng.standard_normal((K, gh, gw)), (0, 2, 2))
        blurred = np.stack([ndimage.gaussian_filter(cover[k], 1.5) for k in range(K)])
        attention = 0.6 * blurred + 0.4 * blurred[CONFUSED] + 0.3 * field / field.std()
        attention = np.clip(attention, 0, None)
        attention /= attention.reshape(K, -1).max(1)[:, None, None]
        state = RefineState(f, attention.astype(np.float32), specs, truth.shape, STRIDE, (True,) * K)
        base = grid_scores(state, class_prototypes(state)[0])
        states.append((RefineState(f, state.attention, specs, truth.shape, STRIDE, (True,) * K, base=base), truth))
    curves = {"paper_miou": [miou(assign(s.base, s.shape, s.stride), t) for s, t in states]}
    for n0 in n0_values:
        memory, scores, changes = ClassMemory(n0=float(n0)), [], []
        for n, (state, truth) in enumerate(states):
            labels = assign(refined_scores(apply_memory(state, memory, specs)), state.shape, state.stride)
            scores.append(miou(labels, truth))
            changes.append(int((labels != truth).sum()))
            memory.learn(str(n), state, truth)
        curves[f"memory_miou_n0_{n0:g}"] = scores
        curves[f"memory_changes_n0_{n0:g}"] = changes
    return curves


def plot(real: dict, sim: dict, n0_values, path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.arange(1, len(real["paper_miou"]) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(n, real["paper_miou"], "o-", color="gray", label="paper (no memory)")
    ax.plot(n, real["memory_miou"], "o-", color="tab:blue", label="with the memory of images 1…n−1")
    alone = [np.nan if v is None else v for v in real["alone_miou"]]
    ax.plot(n, alone, "--", color="tab:green", label="memory alone: class means of images 1…n−1")
    ax.set(title=f"(a) real pipeline, {model} (random weights)", xlabel="image n", ylabel="draft mIoU", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax = axes[1]
    pixels = np.array(real["paper_changes"]) / 1000, np.array(real["memory_changes"]) / 1000
    ax.plot(n, pixels[0], "o-", color="gray", label="paper")
    ax.plot(n, pixels[1], "o-", color="tab:blue", label="with memory")
    ax.set(title="(a) pixels the annotator changes", xlabel="image n",
           ylabel=f"thousand pixels (of {real['pixels'] / 1000:g})")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.plot(n, sim["paper_miou"], "o-", color="gray", label="paper (attention only)")
    for n0, color in zip(n0_values, ("tab:orange", "tab:blue", "tab:purple")):
        ax.plot(n, sim[f"memory_miou_n0_{n0:g}"], "o-", color=color, label=f"memory, n0 = {n0:g} cells")
    ax.set(title="(b) simulated features that carry the classes", xlabel="image n", ylabel="draft mIoU", ylim=(0, 1))
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xticks(n[::2] if len(n) > 10 else n)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--n0", type=float, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--plot", type=Path, default=Path(__file__).parents[1] / "docs" / "dataset_memory.png")
    parser.add_argument("--out", type=Path, default=Path("bench_dataset_memory.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dataset = [make_image(1000 + n, args.size) for n in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        real = real_pipeline(dataset, Path(tmp), args.model)
    sim = simulated_features(dataset, args.n0)
    result = {"images": args.images, "size": args.size, "model": args.model, "classes": CLASSES,
              "n0_default": 256, "real_pipeline": real, "simulated_features": sim,
              "summary": _summary(real, sim, args.n0)}
    args.out.write_text(json.dumps(result, indent=1))
    plot(real, sim, args.n0, args.plot, args.model)
    print(json.dumps(result["summary"], indent=1))
    return 0


def _summary(real: dict, sim: dict, n0_values) -> dict:
    """Means over images 2…N (image 1 has nothing to learn from) and over the last half."""
    def mean(values, start):
        values = [v for v in values[start:] if v is not None]
        return round(float(np.mean(values)), 3) if values else None

    half = len(real["paper_miou"]) // 2
    curves = {k: v for k, v in real.items() if k not in ("draft_s", "pixels")}
    out = {f"real_{k}_mean_2_to_N": mean(v, 1) for k, v in curves.items()}
    out.update({f"real_{k}_mean_last_half": mean(v, half) for k, v in curves.items()})
    out.update({f"sim_{k}_mean_2_to_N": mean(v, 1) for k, v in sim.items()})
    out.update({f"sim_{k}_mean_last_half": mean(v, half) for k, v in sim.items()})
    return out


if __name__ == "__main__":
    sys.exit(main())

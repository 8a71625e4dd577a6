"""Evaluation reports: JSON, Markdown and confusion-matrix plots, each written atomically."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..geo.atomic import atomic_output, write_json

__all__ = ["format_percent", "write_report"]


def format_percent(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def _trim_unmatched(cm, n_classes: int) -> np.ndarray:
    """Drop the column of unmatched clusters when it is empty."""
    cm = np.asarray(cm)
    return cm[:, :n_classes] if cm.shape[1] > n_classes and not cm[:, n_classes:].any() else cm


def _markdown(report: dict) -> str:
    names = report["classes"]
    kind = "unsupervised clusters, Hungarian-matched to classes" if report["unsupervised"] else "class indices"
    lines = [
        "# Evaluation",
        "",
        f"- data set: `{report['dataset']}` ({len(names)} classes), {report['n_images']} image(s)",
        f"- predictions: {kind}",
    ]
    if report.get("unlabelled_predictions"):
        lines.append(f"- {report['unlabelled_predictions']} label pixels were predicted unlabelled (counted as errors)")
    if report["off_palette_pixels"]:
        lines.append(f"- {report['off_palette_pixels']} label pixels had a colour of no class and were ignored")
    for key in ("unmatched_predictions", "unmatched_labels"):
        if report.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {', '.join(Path(p).name for p in report[key])}")
    for ev in report["evaluations"].values():
        lines += ["", f"## {ev['title']}", "",
                  f"**mIoU {format_percent(ev['miou'])}** · pixel accuracy {format_percent(ev['pixel_accuracy'])} · "
                  f"mean class accuracy {format_percent(ev['mean_class_accuracy'])} (%, {ev['n_pixels']} pixels)", "",
                  "| class | IoU | accuracy |", "|---|---:|---:|"]
        lines += [f"| {c} | {format_percent(ev['iou'][c])} | {format_percent(ev['class_accuracy'][c])} |" for c in names]
        if "cluster_to_class" in ev:
            lines += ["", "| cluster | class |", "|---:|---|"]
            lines += [f"| {k} | {names[c] if c >= 0 else '(unmatched)'} |"
                      for k, c in enumerate(ev["cluster_to_class"])]
        cm = _trim_unmatched(ev["confusion_matrix"], len(names))
        cols = names + ["(unmatched)"] * (cm.shape[1] - len(names))
        lines += ["", "Confusion matrix (rows: truth, columns: prediction, pixels):", "",
                  "| truth \\ prediction | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(names, cm)]
    lines += ["", "## Images", "", "| tile | prediction | label | mIoU | pixel accuracy |", "|---|---|---|---:|---:|"]
    lines += [f"| {im['tile_id'] or ''} | {Path(im['prediction']).name} | {Path(im['label']).name} | "
              f"{format_percent(im['miou'])} | {format_percent(im['pixel_accuracy'])} |" for im in report["images"]]
    return "\n".join(lines) + "\n"


def _plot_confusion(path: Path, ev: dict, names: list[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cm = _trim_unmatched(ev["confusion_matrix"], len(names)).astype(np.float64)
    cols = names + ["(unmatched)"] * (cm.shape[1] - len(names))
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    side = 1.2 + 0.55 * max(len(cols), 4)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    ax.set_title(f"{ev['title']}\nmIoU {format_percent(ev['miou'])}, accuracy {format_percent(ev['pixel_accuracy'])}", fontsize=9)
    if len(cols) <= 30:
        for (r, c), v in np.ndenumerate(share):
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def write_report(report: dict, out) -> dict[str, Path]:
    """Write ``OUT.json``, ``OUT.md`` and the confusion-matrix plot ``OUT.png``
    (plus ``OUT_per_image.png`` for unsupervised predictions)."""
    out = Path(out)
    if out.suffix.lower() in (".json", ".md", ".png"):
        out = out.with_suffix("")
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out.with_name(out.name + ".json"), report)}
    md = out.with_name(out.name + ".md")
    with atomic_output(md) as tmp:
        tmp.write_text(_markdown(report), encoding="utf-8")
    paths["markdown"] = md
    evaluations = report["evaluations"]
    main = next(iter(evaluations))
    paths["plot"] = _plot_confusion(out.with_name(out.name + ".png"), evaluations[main], report["classes"])
    if "hungarian_per_image" in evaluations:
        paths["plot_per_image"] = _plot_confusion(out.with_name(out.name + "_per_image.png"),
                                                  evaluations["hungarian_per_image"], report["classes"])
    return paths

"""Evaluation reports: JSON, Markdown and confusion-matrix plots, written together or not at all."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import BadInputError, OutputError
from ..geo.atomic import StagedOutputs, atomic_output, check_name_length, write_json, write_text

__all__ = ["check_report_paths", "format_percent", "report_paths", "write_report"]


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
        lines += [f"| {c} | {format_percent(ev['iou'][c])} | {format_percent(ev['class_accuracy'][c])} |"
                  for c in names]
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
    ax.set_title(f"{ev['title']}\nmIoU {format_percent(ev['miou'])}, accuracy {format_percent(ev['pixel_accuracy'])}",
                 fontsize=9)
    if len(cols) <= 30:
        for (r, c), v in np.ndenumerate(share):
            ax.text(c, r, f"{100 * v:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    with atomic_output(path, check=partial(_png_reads_back, target=path)) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return path


def _png_reads_back(tmp: Path, target: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(tmp) as image:
            image.load()
    except (OSError, UnidentifiedImageError):
        raise OutputError(f"cannot write {target}: the written file does not read back as written; "
                          "nothing was written or replaced") from None


def report_paths(out, unsupervised: bool = False) -> dict[str, Path]:
    """The files a report ``OUT`` consists of: ``OUT.json``, ``OUT.md``, ``OUT.png`` (and
    ``OUT_per_image.png`` for unsupervised predictions); a suffix on ``OUT`` is dropped."""
    out = Path(out)
    if out.suffix.lower() in (".json", ".md", ".png"):
        out = out.with_suffix("")
    paths = {"json": out.with_name(out.name + ".json"), "markdown": out.with_name(out.name + ".md"),
             "plot": out.with_name(out.name + ".png")}
    if unsupervised:
        paths["plot_per_image"] = out.with_name(out.name + "_per_image.png")
    return paths


def check_report_paths(out, unsupervised: bool = False, overwrite: bool = False) -> dict[str, Path]:
    """The report's paths, refused before any work when one exists (without ``overwrite``)."""
    paths = report_paths(out, unsupervised)
    for path in paths.values():
        check_name_length(path, f"the report {path.name}")
        if path.is_dir():
            raise BadInputError(f"{path} is a folder; name the report with --out")
        if path.exists() and not overwrite:
            raise BadInputError(f"{path} exists; pass --overwrite to replace it")
    return paths


def write_report(report: dict, out, replace: bool = True) -> dict[str, Path]:
    """Write ``OUT.json``, ``OUT.md`` and the confusion-matrix plot ``OUT.png`` (plus
    ``OUT_per_image.png`` for unsupervised predictions), all of them or, on failure, none:
    an older report there stays as it was. Without ``replace`` no file there is replaced,
    not even one that appeared while the report was made."""
    evaluations = report["evaluations"]
    paths = report_paths(out, "hungarian_per_image" in evaluations)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    main = next(iter(evaluations))
    with StagedOutputs(replace):
        write_json(paths["json"], report)
        write_text(paths["markdown"], _markdown(report))
        _plot_confusion(paths["plot"], evaluations[main], report["classes"])
        if "plot_per_image" in paths:
            _plot_confusion(paths["plot_per_image"], evaluations["hungarian_per_image"], report["classes"])
    return paths

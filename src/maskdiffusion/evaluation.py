"""Score predictions against ground truth: the ``evaluate`` command and its plain function.

Predictions are class-index rasters (as :func:`~maskdiffusion.geo.raster_io.write_labels`
writes them); ground truth is either ISPRS Potsdam RGB-coded labels (``potsdam6``,
``potsdam3``) or index rasters (``index``). Files are paired by tile id and scored one at a
time by summing confusion matrices. Unsupervised predictions (cluster ids) are matched to
classes with the Hungarian algorithm, once over the whole data set and once per image.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .core.classes import ClassListError, ClassSpec, as_class_specs, preset_classes, read_class_file
from .core.metrics import add_confusion, confusion_matrix, hungarian_match, remap_confusion, scores_from_confusion
from .geo.atomic import atomic_output, write_json
from .geo.isprs import POTSDAM6_TO_3, decode_isprs_labels, map_labels, tile_id
from .geo.raster_io import ImageReadError, read_class_names, read_image, sidecar_path
from .errors import BadInputError

__all__ = [
    "DATASETS",
    "EvaluationError",
    "add_evaluate_parser",
    "dataset_classes",
    "evaluate_pairs",
    "find_pairs",
    "run_evaluate",
    "write_report",
]

DATASETS = ("potsdam6", "potsdam3", "index")
RASTER_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")


class EvaluationError(BadInputError):
    """Input that cannot be evaluated: missing or unpaired files, sizes or classes that differ."""


def dataset_classes(dataset: str, classes: Sequence[ClassSpec | str] | str | None = None) -> list[ClassSpec]:
    """The classes scored for ``dataset``: the Potsdam presets, or ``classes`` for ``index``."""
    if dataset not in DATASETS:
        raise EvaluationError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "index":
        if classes is None:
            raise EvaluationError("--dataset index needs the class names (--classes)")
        return as_class_specs(classes)
    preset = preset_classes(dataset)
    if classes is not None:
        given = [c.name.lower() for c in as_class_specs(classes)]
        if given != [c.name.lower() for c in preset]:
            raise EvaluationError(f"{dataset} has fixed classes ({', '.join(c.name for c in preset)}); "
                                  "use --dataset index for other class lists")
    return preset


def _rasters(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith(".")
                  and not p.stem.lower().endswith("confidence"))


def _by_id(files: list[Path], kind: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for f in files:
        key = tile_id(f)
        other = found.get(key)
        if other is None:
            found[key] = f
            continue
        if "noboundary" in f.name.lower() and "noboundary" not in other.name.lower():
            found[key] = f
        elif "noboundary" not in other.name.lower() or "noboundary" in f.name.lower():
            raise EvaluationError(f"two {kind} files for tile {key!r}: {other.name} and {f.name}")
    return found


def find_pairs(pred, labels, dataset: str = "potsdam6") -> tuple[list[tuple[Path, Path]], list[Path], list[Path]]:
    """Pair prediction and label files (or folders of them) by tile id.

    Two files are paired as given. In folders, rasters are matched by
    :func:`~maskdiffusion.geo.isprs.tile_id`; for Potsdam only files named ``*label*`` count
    as labels, and a ``*_noBoundary`` label wins over the full one of the same tile.

    Returns the pairs and the predictions and labels left without a partner.
    """
    pred, labels = Path(pred), Path(labels)
    for path, what in ((pred, "prediction"), (labels, "label")):
        if not path.exists():
            raise EvaluationError(f"{path}: no such {what} file or folder")
    if pred.is_file() and labels.is_file():
        return [(pred, labels)], [], []
    preds = _rasters(pred) if pred.is_dir() else [pred]
    truths = _rasters(labels) if labels.is_dir() else [labels]
    if dataset != "index" and labels.is_dir():
        named = [p for p in truths if "label" in p.name.lower()]
        truths = named or truths
    pred_ids, label_ids = _by_id(preds, "prediction"), _by_id(truths, "label")
    common = sorted(set(pred_ids) & set(label_ids))
    if not common:
        raise EvaluationError(
            f"no prediction in {pred} matches a label in {labels} by tile id "
            f"(predictions: {', '.join(sorted(pred_ids)) or 'none'}; labels: {', '.join(sorted(label_ids)) or 'none'})"
        )
    pairs = [(pred_ids[k], label_ids[k]) for k in common]
    return (pairs, [pred_ids[k] for k in sorted(set(pred_ids) - set(common))],
            [label_ids[k] for k in sorted(set(label_ids) - set(common))])


def _load(item, what: str) -> tuple[np.ndarray, str]:
    if isinstance(item, np.ndarray):
        return item, f"<{what} array>"
    image, _ = read_image(item)
    return image, str(item)


def _read_target(item, dataset: str, ignore_index: int) -> tuple[np.ndarray, int, str]:
    image, name = _load(item, "label")
    if image.ndim == 3:
        if dataset == "index":
            raise EvaluationError(f"{name}: index labels must have one band, found {image.shape[-1]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index, n_off = decode_isprs_labels(image[..., :3])
        if dataset == "potsdam3":
            index = map_labels(index, POTSDAM6_TO_3)
        return index, n_off, name
    if image.dtype.kind not in "ui":
        raise EvaluationError(f"{name}: labels must be integer class indices, found {image.dtype}")
    index = image.astype(np.int64)
    index[index == ignore_index] = -1
    return index, 0, name


def _prediction_names(path) -> list[str] | None:
    side = sidecar_path(path)
    if side.is_file():
        try:
            return [c["name"] for c in json.loads(side.read_text(encoding="utf-8"))["classes"]]
        except (ValueError, KeyError, TypeError):
            pass
    return read_class_names(path)


def _pred_mapping(item, names: list[str]) -> np.ndarray | None:
    """Map a prediction's own class order (from its sidecar or tags) onto the evaluated classes."""
    if isinstance(item, np.ndarray):
        return None
    pred_names = _prediction_names(item)
    if not pred_names:
        return None
    lower = [n.lower() for n in names]
    pred_lower = [n.lower() for n in pred_names]
    if pred_lower == lower:
        return None
    if lower == [c.name.lower() for c in preset_classes("potsdam3")] and \
            pred_lower == [c.name.lower() for c in preset_classes("potsdam6")]:
        return POTSDAM6_TO_3
    if not set(pred_lower) <= set(lower):
        warnings.warn(f"{item}: its classes ({', '.join(pred_names)}) are not the evaluated ones "
                      f"({', '.join(names)}); class indices are compared as they are", stacklevel=2)
        return None
    return np.array([lower.index(n) for n in pred_lower], dtype=np.int16)


def _read_pred(item, dataset: str, names: list[str], unsupervised: bool) -> tuple[np.ndarray, str]:
    image, name = _load(item, "prediction")
    if image.ndim == 3:
        if dataset == "index" or unsupervised:
            raise EvaluationError(f"{name}: predictions must be one-band class-index rasters")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image, _ = decode_isprs_labels(image[..., :3])
        if dataset == "potsdam3":
            image = map_labels(image, POTSDAM6_TO_3)
        if (image < 0).any():
            raise EvaluationError(f"{name}: colour-coded prediction has colours of no class")
        return image, name
    if image.dtype.kind not in "ui":
        raise EvaluationError(f"{name}: predictions must be integer class indices, found {image.dtype}")
    if not unsupervised:
        mapping = _pred_mapping(item, names)
        if mapping is not None:
            if image.size and image.max() >= len(mapping):
                raise EvaluationError(f"{name}: value {image.max()} is beyond its {len(mapping)} classes")
            image = mapping[image]
    return image, name


def _image_entry(pred_name, label_name, cm, names, n_off, mapping=None) -> dict:
    scores = scores_from_confusion(cm if mapping is None else remap_confusion(cm, mapping), names)
    entry = {
        "tile_id": tile_id(label_name) if not label_name.startswith("<") else None,
        "prediction": pred_name,
        "label": label_name,
        "pixels": scores["n_pixels"],
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "off_palette_pixels": n_off,
    }
    if mapping is not None:
        entry["cluster_to_class"] = mapping.tolist()
    return entry


def _first_prediction_classes(pairs) -> list[str] | None:
    for pred, _ in pairs:
        if not isinstance(pred, np.ndarray):
            return _prediction_names(pred)
    return None


def evaluate_pairs(pairs: Iterable[tuple], dataset: str = "potsdam6", classes=None, unsupervised: bool = False,
                   ignore_index: int = -1) -> dict:
    """Score (prediction, label) pairs of paths or arrays; one image in memory at a time.

    Parameters
    ----------
    pairs : iterable of (prediction, label)
        File paths or arrays. Predictions: (H, W) class indices (cluster ids when
        ``unsupervised``); a sidecar ``*.classes.json`` beside a prediction with another class
        order is honoured. Labels: ISPRS RGB-coded for ``potsdam6``/``potsdam3`` (black and
        off-palette colours ignored) or (H, W) indices.
    dataset : ``"potsdam6"``, ``"potsdam3"`` or ``"index"``.
    classes : class names for ``index`` (default: those stored with the first prediction).
    unsupervised : match clusters to classes (Hungarian), over the data set and per image.
    ignore_index : label value left out (index labels).

    Returns
    -------
    dict
        ``miou`` and ``pixel_accuracy`` of the main evaluation, ``evaluations`` (name ->
        per-class IoU, accuracies, confusion matrix), ``images`` (one entry per pair).
    """
    pairs = list(pairs)
    if not pairs:
        raise EvaluationError("nothing to evaluate: no (prediction, label) pairs")
    if dataset == "index" and classes is None:
        classes = _first_prediction_classes(pairs)
    specs = dataset_classes(dataset, classes)
    names = [c.name for c in specs]
    n = len(names)
    total, per_image_total, images, n_off_total = None, 0, [], 0
    for pred_item, label_item in pairs:
        target, n_off, label_name = _read_target(label_item, dataset, ignore_index)
        pred, pred_name = _read_pred(pred_item, dataset, names, unsupervised)
        if pred.shape != target.shape:
            raise EvaluationError(f"{pred_name} is {pred.shape[0]}x{pred.shape[1]} but its label {label_name} "
                                  f"is {target.shape[0]}x{target.shape[1]}")
        n_pred = int(pred.max()) + 1 if unsupervised and pred.size else n
        try:
            cm = confusion_matrix(pred, target, n, ignore_index=-1, n_pred=n_pred)
        except ValueError as e:
            raise EvaluationError(f"{pred_name} / {label_name}: {e}") from None
        del pred, target
        total = add_confusion(total, cm)
        n_off_total += n_off
        mapping = hungarian_match(cm) if unsupervised else None
        if unsupervised:
            per_image_total = per_image_total + remap_confusion(cm, mapping)
        images.append(_image_entry(pred_name, label_name, cm, names, n_off, mapping))

    report = {"dataset": dataset, "classes": names, "unsupervised": unsupervised, "n_images": len(images),
              "ignore_index": ignore_index, "off_palette_pixels": n_off_total}
    if unsupervised:
        mapping = hungarian_match(total)
        matched = remap_confusion(total, mapping)
        evaluations = {
            "hungarian_dataset": dict(scores_from_confusion(matched, names), cluster_to_class=mapping.tolist(),
                                      cluster_confusion_matrix=total.tolist(),
                                      title="Hungarian matching over the whole data set"),
            "hungarian_per_image": dict(scores_from_confusion(per_image_total, names),
                                        title="Hungarian matching per image"),
        }
        main = evaluations["hungarian_dataset"]
    else:
        evaluations = {"supervised": dict(scores_from_confusion(total, names), title="Supervised")}
        main = evaluations["supervised"]
    report.update(miou=main["miou"], pixel_accuracy=main["pixel_accuracy"], evaluations=evaluations, images=images)
    return report


def _pct(value) -> str:
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
    if report["off_palette_pixels"]:
        lines.append(f"- {report['off_palette_pixels']} label pixels had a colour of no class and were ignored")
    for key in ("unmatched_predictions", "unmatched_labels"):
        if report.get(key):
            lines.append(f"- {key.replace('_', ' ')}: {', '.join(Path(p).name for p in report[key])}")
    for ev in report["evaluations"].values():
        lines += ["", f"## {ev['title']}", "",
                  f"**mIoU {_pct(ev['miou'])}** · pixel accuracy {_pct(ev['pixel_accuracy'])} · "
                  f"mean class accuracy {_pct(ev['mean_class_accuracy'])} (%, {ev['n_pixels']} pixels)", "",
                  "| class | IoU | accuracy |", "|---|---:|---:|"]
        lines += [f"| {c} | {_pct(ev['iou'][c])} | {_pct(ev['class_accuracy'][c])} |" for c in names]
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
              f"{_pct(im['miou'])} | {_pct(im['pixel_accuracy'])} |" for im in report["images"]]
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
    ax.set_title(f"{ev['title']}\nmIoU {_pct(ev['miou'])}, accuracy {_pct(ev['pixel_accuracy'])}", fontsize=9)
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


def _classes_arg(value: str | None):
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() in (".json", ".txt") or path.is_file():
        return read_class_file(path)
    return as_class_specs(value)


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``evaluate`` command on an ``argparse`` sub-parser collection."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score predictions against ground-truth labels (IoU, mIoU, accuracy)",
        description="Score class-index predictions against labels, file by file or folder by folder "
                    "(paired by tile id), and write a JSON and Markdown report and a confusion-matrix plot.",
    )
    parser.add_argument("--pred", required=True, help="prediction raster or folder of them")
    parser.add_argument("--labels", required=True, help="label raster or folder of them")
    parser.add_argument("--dataset", choices=DATASETS, default="potsdam6",
                        help="potsdam6/potsdam3: ISPRS RGB-coded labels; index: index rasters (default potsdam6)")
    parser.add_argument("--classes", help="class names for --dataset index: 'a,b,c', preset:NAME or a class file")
    parser.add_argument("--out", default="evaluation", help="report base name: writes OUT.json, OUT.md, OUT.png")
    parser.add_argument("--unsupervised", action="store_true",
                        help="predictions are cluster ids: match them to classes (Hungarian), "
                             "over the data set and per image")
    parser.add_argument("--ignore-index", type=int, default=-1, help="label value to ignore (index labels)")
    from .cli import _bands, add_model_arguments
    from .core.params import SegmentParams

    d = SegmentParams()
    e2e = parser.add_argument_group("end to end", "with --images, segment the images into the --pred folder "
                                    "first (images already segmented there are kept), then score")
    e2e.add_argument("--images", help="an image or a folder of images to segment with the dataset's classes")
    add_model_arguments(e2e)
    e2e.add_argument("--tile-size", type=int, default=d.tile_size)
    e2e.add_argument("--overlap", type=int, default=d.overlap)
    e2e.add_argument("--scale", type=float, default=d.scale)
    e2e.add_argument("--bands", type=_bands, default=None)
    parser.set_defaults(func=run_evaluate)
    return parser


def segment_images(images, pred_dir, classes: Sequence[ClassSpec], model=None, params=None, *,
                   device: str | None = "auto", dtype: str | None = None) -> list[Path]:
    """Segment an image or a folder of images into ``pred_dir`` (one ``<stem>.tif`` each, with
    its sidecar), keeping predictions already there; returns the prediction paths."""
    from .engine import segment
    from .geo.raster_io import write_labels, write_sidecar

    images = Path(images)
    if not images.exists():
        raise EvaluationError(f"{images}: no such image file or folder")
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in _rasters(images) if images.is_dir() else [images]:
        target = pred_dir / f"{path.stem}.tif"
        if not (target.exists() and sidecar_path(target).exists()):
            image, geo = read_image(path)
            result = segment(image, classes, model, params, device=device, dtype=dtype)
            meta = dict(result.metadata(), image=str(path), georeference=geo.to_dict())
            write_labels(target, result.labels, result.classes, geo, meta)
            write_sidecar(target, meta)
        out.append(target)
    return out


def _segment_for_evaluation(args: argparse.Namespace, classes) -> None:
    from .cli import _model_source
    from .core.params import SegmentParams

    if Path(args.pred).is_file():
        raise EvaluationError(f"with --images, --pred names the folder for the predictions, not a file: {args.pred}")
    params = SegmentParams(tile_size=args.tile_size, overlap=args.overlap, scale=args.scale, bands=args.bands)
    segment_images(args.images, args.pred, dataset_classes(args.dataset, classes), _model_source(args.model),
                   params, device=args.device, dtype=args.dtype)


def run_evaluate(args: argparse.Namespace) -> int:
    """Run ``evaluate``: 0 on success, 2 with one line on stderr for bad input."""
    try:
        classes = _classes_arg(args.classes)
        if args.images:
            _segment_for_evaluation(args, classes)
        pairs, lone_preds, lone_labels = find_pairs(args.pred, args.labels, args.dataset)
        report = evaluate_pairs(pairs, args.dataset, classes, args.unsupervised, args.ignore_index)
    except (EvaluationError, ImageReadError, ClassListError) as e:
        print(f"maskdiffusion evaluate: error: {e}", file=sys.stderr)
        return 2
    report["unmatched_predictions"] = [str(p) for p in lone_preds]
    report["unmatched_labels"] = [str(p) for p in lone_labels]
    for key in ("unmatched_predictions", "unmatched_labels"):
        if report[key]:
            print(f"maskdiffusion evaluate: {len(report[key])} {key.replace('_', ' ')} skipped", file=sys.stderr)
    if report["off_palette_pixels"]:
        print(f"maskdiffusion evaluate: {report['off_palette_pixels']} label pixels of no class colour ignored",
              file=sys.stderr)
    try:
        paths = write_report(report, args.out)
    except OSError as e:
        print(f"maskdiffusion evaluate: error: cannot write the report: {e}", file=sys.stderr)
        return 1
    print(f"mIoU {_pct(report['miou'])}  pixel accuracy {_pct(report['pixel_accuracy'])}  "
          f"({report['n_images']} image(s)) -> {', '.join(str(p) for p in paths.values())}")
    return 0

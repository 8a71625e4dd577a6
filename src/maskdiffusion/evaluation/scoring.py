"""Score predictions against ground truth, one image at a time, by summing confusion matrices.

Predictions are label maps (``0`` = unlabelled, ``k`` = the k-th class, see
:mod:`maskdiffusion.core.labels`) as the engine and :func:`~maskdiffusion.geo.raster_io.write_labels`
write them; files without ``label_values`` (written before) are read as 0-based. Ground truth
is either ISPRS Potsdam RGB-coded labels (``potsdam6``, ``potsdam3``) or label rasters
(``index``, read the same way). Files are paired by tile id. Unlabelled predictions count as
errors. Unsupervised predictions (cluster ids) are matched to classes with the Hungarian
algorithm, once over the whole data set and once per image.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, as_class_specs, preset_classes
from ..core.labels import from_stored, to_index
from ..core.metrics import add_confusion, confusion_matrix, hungarian_match, remap_confusion, scores_from_confusion
from ..errors import BadInputError
from ..geo.isprs import POTSDAM6_TO_3, decode_isprs_labels, map_labels, tile_id
from ..geo.raster_io import read_class_names, read_image, read_label_info

__all__ = ["DATASETS", "EvaluationError", "dataset_classes", "evaluate_pairs", "find_pairs", "raster_files"]

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


def raster_files(folder: Path) -> list[Path]:
    """The raster files of a folder, sorted (hidden files and confidence maps left out)."""
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
    preds = raster_files(pred) if pred.is_dir() else [pred]
    truths = raster_files(labels) if labels.is_dir() else [labels]
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


def _load(item, what: str) -> tuple[np.ndarray, str, dict]:
    """Pixels, a name for messages, and the stored metadata (an array is a current label map)."""
    if isinstance(item, np.ndarray):
        return item, f"<{what} array>", {"label_values": {}}
    image, _ = read_image(item)
    return image, str(item), read_label_info(item)


def _label_index(raw: np.ndarray, meta: dict, n_classes: int, name: str, ignore_index: int | None = None):
    """0-based class indices (int64, -1 = unlabelled or ignored) of a stored label map."""
    if raw.dtype.kind not in "ui":
        raise EvaluationError(f"{name}: labels must be integer label values, found {raw.dtype}")
    ignored = raw == ignore_index if ignore_index is not None and ignore_index >= 0 else None
    if ignored is not None and ignored.any():
        raw = np.where(ignored, 0, raw)
    index = to_index(from_stored(raw, meta, n_classes, what=name))
    if ignored is not None:
        index[ignored] = -1
    return index


def _read_target(item, dataset: str, n_classes: int, ignore_index: int) -> tuple[np.ndarray, int, str]:
    image, name, meta = _load(item, "label")
    if image.ndim == 3:
        if dataset == "index":
            raise EvaluationError(f"{name}: index labels must have one band, found {image.shape[-1]}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index, n_off = decode_isprs_labels(image[..., :3])
        if index.size and not (index >= 0).any():
            raise EvaluationError(f"{name}: no pixel has the colour of a {dataset} class ({n_off} pixels of other "
                                  f"colours); is it a {dataset} label file?")
        if dataset == "potsdam3":
            index = map_labels(index, POTSDAM6_TO_3)
        return index, n_off, name
    return _label_index(image, meta, n_classes, name, ignore_index), 0, name


def _pred_mapping(item, names: list[str]) -> np.ndarray | None:
    """Map a prediction's own class order (from its sidecar or tags) onto the evaluated classes."""
    if isinstance(item, np.ndarray):
        return None
    pred_names = read_class_names(item)
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
    """0-based predicted class (or cluster) indices, -1 where the prediction is unlabelled."""
    image, name, meta = _load(item, "prediction")
    if image.ndim == 3:
        if dataset == "index" or unsupervised:
            raise EvaluationError(f"{name}: predictions must be one-band label rasters")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            index, n_off = decode_isprs_labels(image[..., :3])
        if n_off:
            raise EvaluationError(f"{name}: colour-coded prediction has colours of no class")
        return (map_labels(index, POTSDAM6_TO_3) if dataset == "potsdam3" else index), name
    index = _label_index(image, meta, len(names), name)
    if not unsupervised:
        mapping = _pred_mapping(item, names)
        if mapping is not None:
            if index.size and index.max() >= len(mapping):
                raise EvaluationError(f"{name}: value {index.max() + 1} is beyond its {len(mapping)} classes")
            index = np.where(index >= 0, mapping[np.clip(index, 0, None)], -1)
    return index, name


def _image_entry(pred_name, label_name, cm, names, n_off, unlabelled, mapping=None) -> dict:
    matched = cm if mapping is None else remap_confusion(cm, mapping)
    scores = scores_from_confusion(_with_unlabelled(matched, unlabelled), names)
    entry = {
        "tile_id": tile_id(label_name) if not label_name.startswith("<") else None,
        "prediction": pred_name,
        "label": label_name,
        "pixels": scores["n_pixels"],
        "miou": scores["miou"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "off_palette_pixels": n_off,
        "unlabelled_predictions": int(unlabelled.sum()),
    }
    if mapping is not None:
        entry["cluster_to_class"] = mapping.tolist()
    return entry


def _first_prediction_classes(pairs) -> list[str] | None:
    for pred, _ in pairs:
        if not isinstance(pred, np.ndarray):
            return read_class_names(pred)
    return None


def evaluate_pairs(pairs: Iterable[tuple], dataset: str = "potsdam6", classes=None, unsupervised: bool = False,
                   ignore_index: int = -1) -> dict:
    """Score (prediction, label) pairs of paths or arrays; one image in memory at a time.

    Parameters
    ----------
    pairs : iterable of (prediction, label)
        File paths or arrays. Predictions: (H, W) label maps, 0 = unlabelled (cluster k when
        ``unsupervised``); a sidecar ``*.classes.json`` beside a prediction with another class
        order is honoured. Labels: ISPRS RGB-coded for ``potsdam6``/``potsdam3`` (black and
        off-palette colours ignored) or (H, W) label maps (0 = unlabelled, ignored).
    dataset : ``"potsdam6"``, ``"potsdam3"`` or ``"index"``.
    classes : class names for ``index`` (default: those stored with the first prediction).
    unsupervised : match clusters to classes (Hungarian), over the data set and per image.
    ignore_index : a further stored label value left out (index labels), e.g. 255.

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
    unlabelled_total = np.zeros(n, np.int64)
    for pred_item, label_item in pairs:
        target, n_off, label_name = _read_target(label_item, dataset, n, ignore_index)
        pred, pred_name = _read_pred(pred_item, dataset, names, unsupervised)
        if pred.shape != target.shape:
            raise EvaluationError(f"{pred_name} is {pred.shape[0]}x{pred.shape[1]} but its label {label_name} "
                                  f"is {target.shape[0]}x{target.shape[1]}")
        n_pred = int(pred.max()) + 1 if unsupervised and pred.size else n
        unlabelled = _unlabelled_counts(pred, target, n)
        try:
            cm = confusion_matrix(pred, np.where(pred >= 0, target, -1), n, ignore_index=-1, n_pred=max(n_pred, 1))
        except ValueError as e:
            raise EvaluationError(f"{pred_name} / {label_name}: {e}") from None
        del pred, target
        total = add_confusion(total, cm)
        unlabelled_total += unlabelled
        n_off_total += n_off
        mapping = hungarian_match(cm) if unsupervised else None
        if unsupervised:
            per_image_total = per_image_total + _with_unlabelled(remap_confusion(cm, mapping), unlabelled)
        images.append(_image_entry(pred_name, label_name, cm, names, n_off, unlabelled, mapping))

    if not total.sum() and not unlabelled_total.sum():
        raise EvaluationError("no ground-truth pixel in the labels belongs to a class: nothing to score")
    report = {"dataset": dataset, "classes": names, "unsupervised": unsupervised, "n_images": len(images),
              "ignore_index": ignore_index, "off_palette_pixels": n_off_total,
              "unlabelled_predictions": int(unlabelled_total.sum())}
    if unsupervised:
        mapping = hungarian_match(total)
        matched = _with_unlabelled(remap_confusion(total, mapping), unlabelled_total)
        evaluations = {
            "hungarian_dataset": dict(scores_from_confusion(matched, names), cluster_to_class=mapping.tolist(),
                                      cluster_confusion_matrix=total.tolist(),
                                      title="Hungarian matching over the whole data set"),
            "hungarian_per_image": dict(scores_from_confusion(per_image_total, names),
                                        title="Hungarian matching per image"),
        }
        main = evaluations["hungarian_dataset"]
    else:
        evaluations = {"supervised": dict(scores_from_confusion(_with_unlabelled(total, unlabelled_total), names),
                                          title="Supervised")}
        main = evaluations["supervised"]
    report.update(miou=main["miou"], pixel_accuracy=main["pixel_accuracy"], evaluations=evaluations, images=images)
    return report



def _unlabelled_counts(pred: np.ndarray, target: np.ndarray, n: int) -> np.ndarray:
    """Per true class, the pixels whose prediction is unlabelled (they count as errors)."""
    missed = target[(pred < 0) & (target >= 0)]
    return np.bincount(missed, minlength=n)[:n].astype(np.int64)


def _with_unlabelled(cm: np.ndarray, unlabelled: np.ndarray) -> np.ndarray:
    """``cm`` with its unlabelled predictions added to the column past the classes."""
    n = cm.shape[0]
    out = np.zeros((n, max(cm.shape[1], n + 1)), np.int64)
    out[:, : cm.shape[1]] = cm
    out[:, n] += unlabelled
    return out

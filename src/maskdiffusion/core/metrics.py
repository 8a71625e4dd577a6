"""Segmentation scores from confusion matrices: IoU, mIoU, accuracies, Hungarian matching.

Confusion matrices add up, so a data set is scored by summing the matrices of its images
one at a time, never holding the images together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["add_confusion", "confusion_matrix", "hungarian_match", "remap_confusion", "scores_from_confusion"]

_CHUNK = 1 << 22


def confusion_matrix(pred, target, n_classes: int, ignore_index: int = -1, n_pred: int | None = None) -> np.ndarray:
    """Count pixels per (true class, predicted class).

    Parameters
    ----------
    pred, target : integer arrays of the same shape
        Predicted and true class indices.
    n_classes : number of true classes; ``target`` values outside ``0..n_classes-1`` must be
        ``ignore_index``.
    ignore_index : ``target`` value of pixels left out.
    n_pred : number of predicted values (clusters in unsupervised mode), default ``n_classes``.

    Returns
    -------
    (n_classes, n_pred) int64 array, rows = truth, columns = prediction.
    """
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and labels {target.shape} differ in shape")
    n_pred = n_classes if n_pred is None else n_pred
    pred, target = pred.ravel(), target.ravel()
    cm = np.zeros(n_classes * n_pred, dtype=np.int64)
    for start in range(0, pred.size, _CHUNK):
        p = pred[start:start + _CHUNK].astype(np.int64)
        t = target[start:start + _CHUNK].astype(np.int64)
        keep = t != ignore_index
        p, t = p[keep], t[keep]
        if t.size and (t.min() < 0 or t.max() >= n_classes):
            raise ValueError(f"label value {t.min() if t.min() < 0 else t.max()} is not a class index "
                             f"0-{n_classes - 1} nor the ignore index {ignore_index}")
        if p.size and (p.min() < 0 or p.max() >= n_pred):
            raise ValueError(f"predicted value {p.min() if p.min() < 0 else p.max()} is outside 0-{n_pred - 1}")
        cm += np.bincount(t * n_pred + p, minlength=n_classes * n_pred)
    return cm.reshape(n_classes, n_pred)


def add_confusion(a: np.ndarray | None, b: np.ndarray) -> np.ndarray:
    """Sum two confusion matrices with the same rows, padding the narrower with zero columns."""
    if a is None:
        return b.copy()
    width = max(a.shape[1], b.shape[1])
    out = np.zeros((a.shape[0], width), dtype=np.int64)
    out[:, : a.shape[1]] += a
    out[:, : b.shape[1]] += b
    return out


def scores_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict:
    """Per-class IoU and accuracy, mIoU, pixel accuracy from a (true, predicted) matrix.

    Columns past the number of classes hold predictions that match no class (unmatched
    clusters): they count as errors. A class neither present nor predicted has IoU NaN and
    is left out of the mean; a class not present has class accuracy NaN.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.shape[0]
    if len(class_names) != n or cm.shape[1] < n:
        raise ValueError(f"confusion matrix {cm.shape} does not fit {len(class_names)} classes")
    tp = np.diag(cm[:, :n]).astype(np.float64)
    true = cm.sum(axis=1).astype(np.float64)
    predicted = cm[:, :n].sum(axis=0).astype(np.float64)
    union = true + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(true > 0, tp / true, np.nan)
    total = cm.sum()
    names = list(class_names)
    return {
        "classes": names,
        "iou": dict(zip(names, iou.tolist())),
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "class_accuracy": dict(zip(names, class_acc.tolist())),
        "mean_class_accuracy": float(np.nanmean(class_acc)) if np.isfinite(class_acc).any() else float("nan"),
        "n_pixels": int(total),
        "confusion_matrix": cm.tolist(),
    }


def hungarian_match(cm: np.ndarray) -> np.ndarray:
    """Map each predicted cluster to one class so that the most pixels agree (one-to-one).

    ``cm`` is (n_classes, n_clusters); the result has one entry per cluster, the class it
    stands for, or -1 for clusters left over when there are more clusters than classes.
    """
    cm = np.asarray(cm)
    rows, cols = linear_sum_assignment(cm, maximize=True)
    mapping = np.full(cm.shape[1], -1, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def remap_confusion(cm: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Merge the columns of a (class, cluster) matrix into classes through ``mapping``.

    Returns (n_classes, n_classes + 1): the last column collects unmatched clusters (-1).
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = cm.shape[0]
    mapping = np.asarray(mapping)
    target = np.where(mapping >= 0, mapping, n)
    out = np.zeros((n, n + 1), dtype=np.int64)
    np.add.at(out.T, target, cm.T)
    return out

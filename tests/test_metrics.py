"""Confusion matrices, IoU/mIoU/accuracies on a hand-computed example, Hungarian matching."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskdiffusion.core import metrics
from maskdiffusion.core.metrics import (
    add_confusion,
    confusion_matrix,
    hungarian_match,
    remap_confusion,
    scores_from_confusion,
)

NAMES = ["road", "house", "tree", "water"]
TARGET = np.array([[0, 0, 1, 1], [2, 2, -1, 0]])
PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])


def test_hand_computed_example():
    cm = confusion_matrix(PRED, TARGET, 4)
    np.testing.assert_array_equal(cm, [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    s = scores_from_confusion(cm, NAMES)
    # road: 2 / (3 true + 3 predicted - 2); house: 2 / (2 + 3 - 2); tree: 1 / (2 + 1 - 1)
    assert s["iou"]["road"] == pytest.approx(0.5)
    assert s["iou"]["house"] == pytest.approx(2 / 3)
    assert s["iou"]["tree"] == pytest.approx(0.5)
    assert math.isnan(s["iou"]["water"])
    assert s["miou"] == pytest.approx(5 / 9)
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    assert s["class_accuracy"]["road"] == pytest.approx(2 / 3)
    assert s["class_accuracy"]["house"] == 1.0
    assert math.isnan(s["class_accuracy"]["water"])
    assert s["mean_class_accuracy"] == pytest.approx(13 / 18)
    assert s["n_pixels"] == 7


def test_predicted_but_absent_class_scores_zero_not_nan():
    s = scores_from_confusion(confusion_matrix(np.array([3, 0]), np.array([0, 0]), 4), NAMES)
    assert s["iou"]["water"] == 0.0
    assert math.isnan(s["iou"]["tree"])


def test_confusion_matrices_add_up_and_stream(monkeypatch):
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 5, (64, 48))
    pred = rng.integers(0, 5, (64, 48))
    whole = confusion_matrix(pred, target, 5)
    halves = confusion_matrix(pred[:32], target[:32], 5) + confusion_matrix(pred[32:], target[32:], 5)
    np.testing.assert_array_equal(whole, halves)
    monkeypatch.setattr(metrics, "_CHUNK", 100)
    np.testing.assert_array_equal(confusion_matrix(pred, target, 5), whole)
    assert whole.sum() == (target >= 0).sum() and whole.dtype == np.int64


def test_confusion_matrix_rejects_bad_values():
    with pytest.raises(ValueError, match="label value 7"):
        confusion_matrix(np.zeros(3, int), np.array([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="predicted value 3"):
        confusion_matrix(np.array([0, 3, 1]), np.zeros(3, int), 3)
    with pytest.raises(ValueError, match="differ in shape"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3)
    assert confusion_matrix(np.array([0, 1]), np.array([255, 1]), 3, ignore_index=255).sum() == 1


def test_add_confusion_pads_columns():
    a = np.ones((2, 3), np.int64)
    b = np.ones((2, 5), np.int64)
    np.testing.assert_array_equal(add_confusion(add_confusion(None, a), b), [[2, 2, 2, 1, 1]] * 2)


def test_hungarian_on_permuted_prediction_is_perfect():
    target = np.random.default_rng(1).integers(0, 4, (30, 30))
    perm = np.array([2, 0, 3, 1])
    clusters = perm[target]
    cm = confusion_matrix(clusters, target, 4)
    mapping = hungarian_match(cm)
    np.testing.assert_array_equal(mapping[perm], np.arange(4))
    s = scores_from_confusion(remap_confusion(cm, mapping), NAMES)
    assert s["miou"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_hungarian_with_more_clusters_counts_leftovers_as_errors():
    target = np.array([0, 0, 0, 1, 1, 1])
    clusters = np.array([2, 2, 0, 1, 1, 1])
    cm = confusion_matrix(clusters, target, 2, n_pred=3)
    mapping = hungarian_match(cm)
    np.testing.assert_array_equal(mapping, [-1, 1, 0])
    merged = remap_confusion(cm, mapping)
    np.testing.assert_array_equal(merged, [[2, 0, 1], [0, 3, 0]])
    s = scores_from_confusion(merged, ["a", "b"])
    assert s["pixel_accuracy"] == pytest.approx(5 / 6)
    assert s["iou"]["a"] == pytest.approx(2 / 3) and s["iou"]["b"] == 1.0


def test_hungarian_with_fewer_clusters_leaves_classes_unpredicted():
    target = np.array([0, 1, 2, 2])
    clusters = np.array([0, 0, 1, 1])
    mapping = hungarian_match(confusion_matrix(clusters, target, 3, n_pred=2))
    assert mapping[1] == 2 and mapping[0] in (0, 1)

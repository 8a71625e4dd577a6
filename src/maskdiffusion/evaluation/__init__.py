"""Evaluation: score label maps against ground truth (IoU, mIoU, accuracies, Hungarian matching).

:mod:`.scoring` pairs files and sums confusion matrices, :mod:`.report` writes JSON, Markdown
and plots, :mod:`.predictions` segments images for an end-to-end evaluation. The command
line face is :mod:`maskdiffusion.cli.evaluate`.
"""

from .predictions import segment_images
from .report import format_percent, write_report
from .scoring import DATASETS, EvaluationError, dataset_classes, evaluate_pairs, find_pairs, raster_files

__all__ = [
    "DATASETS",
    "EvaluationError",
    "dataset_classes",
    "evaluate_pairs",
    "find_pairs",
    "format_percent",
    "raster_files",
    "segment_images",
    "write_report",
]

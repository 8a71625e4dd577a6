"""Evaluation: score label maps against ground truth (IoU, mIoU, accuracies, Hungarian matching).

:mod:`.scoring` pairs files and sums confusion matrices, :mod:`.report` writes JSON, Markdown
and plots, :mod:`.predictions` segments images for an end-to-end evaluation. The command
line face is :mod:`maskdiffusion.cli.evaluate`.
"""

from .predictions import segment_images
from .report import check_report_paths, format_percent, report_paths, write_report
from .scoring import DATASETS, EvaluationError, dataset_classes, evaluate_pairs, find_pairs, raster_files

__all__ = [
    "DATASETS",
    "EvaluationError",
    "check_report_paths",
    "dataset_classes",
    "evaluate_pairs",
    "find_pairs",
    "format_percent",
    "raster_files",
    "report_paths",
    "segment_images",
    "write_report",
]

"""Predictions for an evaluation: segment images into a folder, keeping the ones already there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..core.classes import ClassSpec
from ..geo.atomic import StagedOutputs
from ..geo.raster_io import read_input, sidecar_path, write_labels, write_sidecar
from .scoring import EvaluationError, raster_files

__all__ = ["segment_images"]


def segment_images(images, pred_dir, classes: Sequence[ClassSpec], model=None, params=None, *,
                   device: str | None = "auto", dtype: str | None = None) -> list[Path]:
    """Segment an image or a folder of images into ``pred_dir`` (one ``<stem>.tif`` each, with
    its sidecar), keeping predictions already there; returns the prediction paths."""
    from ..engine import segment

    images = Path(images)
    if not images.exists():
        raise EvaluationError(f"{images}: no such image file or folder")
    pred_dir = Path(pred_dir)
    pred_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for path in raster_files(images) if images.is_dir() else [images]:
        target = pred_dir / f"{path.stem}.tif"
        if not (target.exists() and sidecar_path(target).exists()):
            image, geo, valid = read_input(path)
            result = segment(image, classes, model, params, device=device, dtype=dtype, return_confidence=False,
                             valid=valid)
            meta = dict(result.metadata(), image=str(path), georeference=geo.to_dict())
            with StagedOutputs():
                write_labels(target, result.labels, result.classes, geo, meta)
                write_sidecar(target, meta)
        out.append(target)
    return out

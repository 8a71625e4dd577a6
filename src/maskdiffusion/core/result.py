"""What a run gives back: the result of a segmentation and the progress events before it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .classes import ClassSpec
from .labels import SOFTWARE, label_values
from .params import SegmentParams

__all__ = ["Progress", "SegmentationResult"]


@dataclass(frozen=True)
class Progress:
    """One step of a run: ``done`` of ``total`` steps of ``stage`` ("load", "features", "assign").

    "load" steps carry messages only: the model loaded, and OpenVINO converting it (once per
    model and tile size; each message starts with ``OpenVINO:``).

    A step may carry labels finished since the previous one: ``region`` (y0, y1, x0, x1) on the
    input image's grid and ``labels``, the label map of that region. With ``final`` they equal
    the end result there (per-tile prototypes: a band of rows is final once every tile that
    blends into it is done); without, they are a provisional draft (image-wide prototypes and
    clusters: each tile's own prototypes, before the second pass).
    """

    done: int
    total: int
    stage: str
    message: str = ""
    region: tuple[int, int, int, int] | None = None
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)
    final: bool = True


@dataclass
class SegmentationResult:
    """A segmentation on the input image's pixel grid.

    labels: (H, W) label map (uint8, uint16 above 255 classes): 0 = unlabelled, value k is
        ``classes[k - 1]`` (:mod:`maskdiffusion.core.labels`).
    confidence: (H, W) float32 margin between the best and second-best score (0 = unsure), or
        ``None`` when not asked for (``return_confidence=False``).
    attention: (K, h, w) float32 max-normalised class attention maps on a coarse grid whose cell
        is ``attention_stride`` input pixels (16 at scale 1).
    scores: (K, H, W) float32 blended class scores, when asked for.
    clusters_to_classes: in unsupervised mode, for each cluster the 0-based index of the class
        whose attention overlaps it most (or -1 without class names).
    features: (C, h, w) float16 unit features f̂ on the attention grid, when asked for.
    grid_scores: (K, h, w) float32 class scores averaged over tiles on that grid, with features.
    bands: the input bands the model saw as R, G, B (0-based; a gray image gives ``(0, 0, 0)``).
    device, precision, backend: where, in which precision and by what the model ran (``"cpu"``,
        ``"bf16"``, ``"openvino"``...).
    """

    labels: np.ndarray
    classes: list[ClassSpec]
    confidence: np.ndarray | None
    attention: np.ndarray
    attention_stride: float
    params: SegmentParams
    model: str = ""
    device: str = ""
    precision: str = ""
    backend: str = ""
    scores: np.ndarray | None = None
    clusters_to_classes: np.ndarray | None = None
    prompt_classes: list[ClassSpec] = field(default_factory=list)
    features: np.ndarray | None = None
    grid_scores: np.ndarray | None = None
    bands: tuple[int, ...] | None = None

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def metadata(self) -> dict:
        """JSON-ready description (classes, model, parameters, version) for sidecars and layers."""
        from .. import __version__

        meta = {
            "classes": [dict(c.to_dict(), value=k) for k, c in enumerate(self.classes, start=1)],
            "label_values": label_values(self.classes),
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "backend": self.backend,
            "parameters": self.params.to_dict(),
            "version": __version__,
            "software": SOFTWARE,
        }
        if self.bands is not None:
            meta["bands_used"] = list(self.bands)
        if self.clusters_to_classes is not None:
            meta["clusters_to_classes"] = [int(i) for i in self.clusters_to_classes]
            meta["prompt_classes"] = [c.to_dict() for c in self.prompt_classes]
        return meta

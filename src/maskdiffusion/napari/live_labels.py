"""A run's labels on screen while it runs: finished regions painted into the class layers.

The engine's progress steps carry the regions it has finished (:class:`~maskdiffusion.core.
result.Progress`). :class:`LiveLabels` paints them as they arrive, a few layers' bands per turn
of the event loop: into the layers of the image's earlier run (read-only meanwhile), or into new
class layers added at the first region. A cancelled or failed run takes it all back — new
layers are removed, earlier ones show their session again — so the viewer is as before the run.
Nothing here enters an undo history: the finished run becomes one session step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassSpec
from .images import LayerImage
from .layers import DRAFT, SOFTWARE, class_layer_data, write_into_layer
from .state import AFTER_SHOW_MS, BAND_PIXELS, AnnotatorState, ImageRun, Turn, next_turn

if TYPE_CHECKING:
    import napari

__all__ = ["LiveLabels"]


class LiveLabels:
    """Paint a running segmentation's regions into class layers, and undo that on cancel."""

    def __init__(self, viewer: napari.Viewer, state: AnnotatorState, image_layer, image: LayerImage,
                 classes: list[ClassSpec]):
        self.viewer, self.image, self.classes = viewer, image, list(classes)
        run = state.runs.get(image_layer)
        names = [c.name for c in classes]
        self.run: ImageRun | None = run if (
            run is not None and [c.name for c in run.classes] == names and len(run.layers) == len(classes)
            and all(ly in viewer.layers for ly in run.layers) and tuple(run.layers[0].data.shape) == image.shape
        ) else None
        self.layers: list = list(self.run.layers) if self.run is not None else []
        self.created: list = []
        self.unshown: list = []
        self.queue: list = []
        self.touched: list = []
        self.active = True
        self._scheduled = False
        for layer in self.layers:
            layer.editable = False

    def add(self, plane: tuple[int, ...], region, labels: np.ndarray) -> None:
        """Queue a finished (or draft) region of ``plane`` for painting."""
        if not self.active:
            return
        self.touched.append((tuple(plane), region))
        y0, y1, x0, x1 = region
        rows = max(1, BAND_PIXELS // max(x1 - x0, 1))
        for start in range(y0, y1, rows):
            stop = min(y1, start + rows)
            band = labels[start - y0:stop - y0]
            self.queue += [(tuple(plane), (start, stop, x0, x1), band, k) for k in range(1, len(self.classes) + 1)]
        self._schedule()

    def _schedule(self, delay_ms: int = 1) -> None:
        if not self._scheduled and self.active:
            self._scheduled = True
            next_turn(self._next, delay_ms)

    def _next(self) -> None:
        """One turn: add one missing layer, show it, or paint layers' bands for a :class:`~.state.Turn`.

        A layer is added hidden and shown at the next turn: napari's insertion (visuals, overlays,
        controls: ~110 ms here at any size) and the upload of its texture (110–180 ms at 6000²
        under Xvfb) are two turns, not one, and the turn after a show waits
        :data:`~.state.AFTER_SHOW_MS` so that what is due meanwhile runs between them.
        """
        self._scheduled = False
        if not self.active:
            return
        delay = 1
        if self.unshown:
            self.unshown.pop(0).visible = True
            delay = AFTER_SHOW_MS
        elif len(self.layers) < len(self.classes):
            k = len(self.layers) + 1
            base = {"software": SOFTWARE, "image": self.image.name}
            if self.image.georeference:
                base["georeference"] = self.image.georeference
            data, kwargs, _ = class_layer_data(np.zeros(self.image.shape, np.uint8), self.classes[k - 1], k, base,
                                               self.image.scale, self.image.translate)
            layer = self.viewer.add_labels(data, visible=False, **kwargs)
            layer.editable = False
            self.layers.append(layer)
            self.created.append(layer)
            self.unshown.append(layer)
        else:
            turn = Turn()
            while self.queue and turn.fits():
                plane, (y0, y1, x0, x1), labels, k = self.queue.pop(0)
                layer = self.layers[k - 1]
                if layer in self.viewer.layers:
                    write_into_layer(layer, np.where(labels == k, np.uint8(DRAFT), np.uint8(0)), plane,
                                     (y0, y1, x0, x1))
        if self.queue or self.unshown or len(self.layers) < len(self.classes):
            self._schedule(delay)

    def release(self) -> list:
        """The run finished: stop painting, make the layers editable; returns the new layers."""
        self.active = False
        self.queue.clear()
        for layer in self.layers:
            layer.editable = True
        while self.unshown:
            self.unshown.pop().visible = True
        return [ly for ly in self.created if ly in self.viewer.layers]

    def take_back(self) -> None:
        """The run was cancelled or failed: remove the new layers, show the earlier map again."""
        self.unshown.clear()
        self.release()
        for layer in self.created:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        if self.run is not None:
            for plane, (y0, y1, x0, x1) in self.touched:
                if plane in self.run.sessions:
                    self.run.write(plane, (y0, y1, x0, x1))
                    continue
                for layer in self.layers:
                    write_into_layer(layer, np.zeros((y1 - y0, x1 - x0), np.uint8), plane, (y0, y1, x0, x1))

"""The MaskDiffusion dock: a Segment tab and a Refine tab around one shared state.

The dock owns the :class:`~.state.AnnotatorState` of its viewer and gives it to both panels;
it keeps the state in step with the viewer's layers (removed layers are forgotten, the class
layers of an opened session bundle are taken in) and tells the panels when layers change.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QTabWidget, QVBoxLayout, QWidget

from .layers import CLASS
from .refine_panel import RefinePanel
from .segment_panel import SegmentPanel
from .state import AnnotatorState, ImageRun

if TYPE_CHECKING:
    import napari

__all__ = ["AnnotatorDock"]


def _disconnect(connections, stop, *_) -> None:
    stop()
    for event, callback in connections:
        event.disconnect(callback)


class AnnotatorDock(QWidget):
    """Segment an image from class names, then correct it with a few strokes."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.state = AnnotatorState()
        self.segment = SegmentPanel(viewer, self.state)
        self.refine = RefinePanel(viewer, self.state)
        self.tabs = QTabWidget()
        self.tabs.addTab(self.segment, "Segment")
        self.tabs.addTab(self.refine, "Refine")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        connections = [
            (viewer.layers.events.inserted, self._on_inserted),
            (viewer.layers.events.removed, self._on_removed),
            (viewer.layers.selection.events.active, self._on_active),
        ]
        for event, callback in connections:
            event.connect(callback)
        self.destroyed.connect(partial(_disconnect, connections, self.segment.stop))
        QTimer.singleShot(0, self._adopt_sessions)

    def reset_choices(self, *_) -> None:
        """Refill the panels' layer choices (napari calls this when layers change)."""
        self.segment.reset_choices()
        self.refine.reset_choices()

    def _on_inserted(self, event=None) -> None:
        QTimer.singleShot(0, self._adopt_sessions)
        QTimer.singleShot(0, self.refine.reset_choices)

    def _on_removed(self, event) -> None:
        self.state.forget_layers([event.value])
        self.refine.reset_choices()

    def _on_active(self, event=None) -> None:
        self.refine.reset_choices()

    def _adopt_sessions(self) -> None:
        """Take in the class layers of opened session bundles (their metadata names the bundle)."""
        from ..session_bundle import load_session
        from .images import describe_image

        groups: dict[str, list] = {}
        for layer in self.viewer.layers:
            folder = layer.metadata.get("session")
            if folder and layer.metadata.get("kind") == CLASS and self.state.run_of(layer) is None:
                groups.setdefault(str(folder), []).append(layer)
        for folder, layers in groups.items():
            session = load_session(folder)
            image_layer = next((ly for ly in self.viewer.layers if ly.metadata.get("session") == folder
                                and ly.metadata.get("kind") != CLASS and hasattr(ly, "rgb")), None)
            key = image_layer if image_layer is not None else layers[0]
            image = describe_image(image_layer) if image_layer is not None else _layers_image(layers[0], session)
            run = ImageRun(image, layers=layers, sessions={(): session}, session_path=Path(folder))
            for layer in layers:
                run.bind(layer, tuple)
            self.state.runs[key] = run
        if groups:
            self.refine.reset_choices()


def _layers_image(layer, session):
    """A description of the image of a session whose image file is gone, from its class layer."""
    from .images import LayerImage

    return LayerImage(session.image.get("layer") or layer.name, tuple(layer.data.shape), None, ("gray",),
                      tuple(layer.scale), tuple(layer.translate), session.image.get("georeference"))

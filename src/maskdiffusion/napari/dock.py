"""The MaskDiffusion dock: a Segment tab and a Refine tab around one shared state.

The dock owns the :class:`~.state.AnnotatorState` of its viewer and gives it to both panels;
it keeps the state in step with the viewer's layers (removed layers are forgotten, the class
layers of an opened session bundle are taken in) and tells the panels when layers change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from ..errors import BadInputError, OutputError
from .garbage import release
from .layers import CLASS, base_metadata, semantic_layer_data
from .notify import report
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
        row = QHBoxLayout()
        save = QPushButton("Save labels…")
        save.setToolTip("the image's label map (0 = unlabelled, k = k-th class) as a GeoTIFF with its classes, "
                        "colours and georeference (or a palette PNG), and OUT.classes.json beside it")
        save.clicked.connect(self._save_dialog)
        self.saved_label = QLabel("")
        self._label_worker = None
        self.saved_label.setWordWrap(True)
        row.addWidget(save)
        row.addWidget(self.saved_label, 1)
        layout.addLayout(row)
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

    def current_run(self):
        """The run of the selected layer, else the Refine tab's, else the Segment tab's image's."""
        return (self.state.run_of(self.viewer.layers.selection.active) or self.refine.current()[0]
                or self.state.run_of(self.segment.image_layer()))

    def _label_writer(self, path) -> Callable[[], list[str]]:
        """Check what ``path`` would save and copy the current run's map (the plane in view; kept
        packed, milliseconds); the returned call writes it with its sidecar, on any thread."""
        from .writers import write_geotiff, write_palette_png

        run = self.current_run()
        if run is None or not run.sessions:
            raise BadInputError("nothing to save yet: segment an image first")
        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff", ".png"):
            raise BadInputError(f"save labels as .tif, .tiff or .png, not {path.name}")
        plane = self.refine.current()[1] if run is self.refine.current()[0] else ()
        session = run.session(plane) or next(iter(run.sessions.values()))
        base = base_metadata(run.image, run.layers[0].metadata if run.layers else {})
        labels, classes = session.labels.copy(), list(session.classes)
        write = write_palette_png if path.suffix.lower() == ".png" else write_geotiff

        def write_now() -> list[str]:
            data, kwargs, kind = semantic_layer_data(np.asarray(labels), classes, base)
            try:
                return write(str(path), [(data, kwargs, kind)])
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from None

        return write_now

    def save_labels(self, path) -> list[str]:
        """Write the current run's label map (the plane in view) with its sidecar now, on this
        thread; returns the files. *Save labels…* writes with :meth:`save_labels_soon`."""
        return self._labels_saved(self._label_writer(path)())

    def save_labels_soon(self, path):
        """Write the label map like :meth:`save_labels`, on a worker (at 6000² the map's unpacking
        and the file's encoding took 0.5–0.7 s on the interface's thread); returns the worker, or
        ``None`` after one notification of what is wrong."""
        from napari.qt.threading import create_worker

        try:
            write = self._label_writer(path)
        except BadInputError as e:
            report(e)
            return None
        self.saved_label.setText("saving …")
        self._label_worker = worker = create_worker(write, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._labels_saved)
        worker.errored.connect(self._labels_not_saved)
        worker.start()
        return worker

    def _labels_saved(self, written: list[str]) -> list[str]:
        self.saved_label.setText(f"saved {written[0]}")
        return written

    def _labels_not_saved(self, exc: BaseException) -> None:
        self.saved_label.setText("not saved")
        report(exc)

    def _save_dialog(self) -> None:
        run = self.current_run()
        name = (run.image.name if run is not None else "labels") + "_labels.tif"
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", name, "GeoTIFF (*.tif *.tiff);;Palette PNG (*.png)")
        if path:
            self.save_labels_soon(path)

    def _on_inserted(self, event=None) -> None:
        QTimer.singleShot(0, self._adopt_sessions)
        QTimer.singleShot(0, self.refine.reset_choices)

    def hideEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        release()
        super().hideEvent(event)

    def _on_removed(self, event) -> None:
        release()
        self.state.forget_layers([event.value])
        self.refine.reset_choices()

    def _on_active(self, event=None) -> None:
        self.segment.follow_selection()
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

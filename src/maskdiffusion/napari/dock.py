"""The MaskDiffusion dock: a Segment tab and a Refine tab around one shared state, and Save labels….

The dock owns the :class:`~.annotation.AnnotatorState` of its viewer and gives it to both panels;
it tells the state what happens in the viewer's layer list: class layers that arrive from a file
are bound as annotations (:meth:`~.annotation.AnnotatorState.adopt`), deleted ones delete their
class, and a label raster of ours that napari opened as a plain image is opened as its classes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import BadInputError, OutputError
from .annotation import AnnotatorState, remove_layers
from .dataset_panel import DatasetPanel
from .images import source_path
from .napari_compat import unwrapped
from .notify import report, say
from .refine_panel import RefinePanel
from .segment_panel import SegmentPanel
from .turns import next_turn
from .workers import make_worker, start

if TYPE_CHECKING:
    import napari

    from ..session import Session
    from .annotation import Annotation

__all__ = ["AnnotatorDock"]

SAVE_HINT = "the whole map, its classes and georeference"


def _disconnect(connections, stop, state, dataset, *_) -> None:
    stop()
    state.close()
    dataset.close_project()
    for event, callback in connections:
        event.disconnect(callback)


class AnnotatorDock(QWidget):
    """Segment an image from class names, then correct it with a few strokes."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer = unwrapped(viewer)
        self.state = AnnotatorState(notify=say)
        self.segment = SegmentPanel(viewer, self.state)
        self.refine = RefinePanel(viewer, self.state)
        self.dataset = DatasetPanel(viewer, self.state, self.segment)
        self.state.on_change, self.state.background = self._on_change, self.refine.background
        self.tabs = QTabWidget()
        self.tabs.addTab(self.segment, "Segment")
        self.tabs.addTab(self.refine, "Refine")
        self.tabs.addTab(self.dataset, "Dataset")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.tabs)
        row = QHBoxLayout()
        save = QPushButton("Save labels…")
        save.setToolTip("the image's label map (0 = unlabelled, k = k-th class) as a GeoTIFF with its classes, "
                        "colours and georeference (or a palette PNG), and OUT.classes.json beside it; an "
                        "annotation opened from a file can be saved back in place. (File › Save Selected "
                        "Layer(s) preselects napari's own writer, which keeps no classes nor georeference: "
                        "choose 'MaskDiffusion GeoTIFF labels' there.)")
        save.clicked.connect(self._save_dialog)
        self.saved_label = QLabel(SAVE_HINT)
        self.saved_label.setWordWrap(True)
        self._label_worker = None
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
        self.destroyed.connect(partial(_disconnect, connections, self.segment.stop, self.state, self.dataset))
        self._arrived = list(viewer.layers)
        next_turn(self.adopt)

    def reset_choices(self, *_) -> None:
        """Refill the panels' layer choices (napari calls this when layers change)."""
        self.segment.reset_choices()
        self.refine.reset_choices()

    def current(self) -> tuple[Annotation | None, tuple[int, ...], Session | None]:
        """The annotation in front, its plane in view and that plane's session (see the Refine tab)."""
        return self.refine.current()

    # ------------------------------------------------------------------ layers coming and going

    def _on_inserted(self, event) -> None:
        layer = event.value
        path = source_path(layer) if layer.metadata.get("kind") is None else None
        if path is not None and hasattr(layer, "rgb"):
            from ..geo.label_files import label_sidecar

            sidecar = label_sidecar(path)
            if sidecar is not None:
                next_turn(partial(self._open_as_classes, layer, sidecar))
                return
        self._arrived.append(layer)
        if len(self._arrived) == 1:
            next_turn(self.adopt)

    def _open_as_classes(self, layer, sidecar: Path) -> None:
        """napari opened one of our label rasters as a grey image: open it as its classes."""
        def reopen():
            self.viewer.open(str(sidecar), plugin="napari-maskdiffusion")
            say(f"{Path(source_path(layer) or sidecar).name} holds MaskDiffusion labels: opened as "
                             "its class layers (with its image, when found)")

        remove_layers(self.viewer, [layer], reopen)

    def adopt(self) -> None:
        """Bind the class layers that arrived from a file (or a split) as annotations."""
        arrived, self._arrived = self._arrived, []
        if self.state.adopt(self.viewer, arrived):
            self.refine.reset_choices()
            self._show_save_target()

    def _on_removed(self, event) -> None:
        self.state.layer_removed(event.value)
        self.refine.reset_choices()

    def _on_active(self, event=None) -> None:
        self.segment.follow_selection()
        self.refine.reset_choices()
        self._show_save_target()

    def _on_change(self, annotation: Annotation, what: str) -> None:
        self.refine.on_change(annotation, what)
        self._show_save_target()

    def _show_save_target(self) -> None:
        """Beside *Save labels…*: the file the annotation in front saves back to, if any."""
        annotation, _, _ = self.current()
        path = self.in_place_path(annotation)
        self.saved_label.setText(f"{annotation.name}: {Path(path).name}" if path else SAVE_HINT)

    # ------------------------------------------------------------------ Save labels…

    def _label_writer(self, path) -> Callable[[], list[str]]:
        """Check what ``path`` would save and copy the map of the annotation in front (the plane in
        view); the returned call writes it with its sidecar, on any thread."""
        from .writers import write_annotation

        annotation, plane, session = self.current()
        if session is None:
            raise BadInputError("nothing to save yet: segment an image first, or open a result")
        for layer in annotation.ordered_layers():
            annotation.take_strokes(layer, plane)
        path = Path(path)
        if path.suffix.lower() not in (".tif", ".tiff", ".png"):
            raise BadInputError(f"save labels as .tif, .tiff or .png, not {path.name}")
        labels, classes = session.labels.copy(), list(session.classes)
        meta = annotation.base_metadata()

        def write_now() -> list[str]:
            try:
                return write_annotation(path, labels, classes, meta)
            except OSError as e:
                raise OutputError(f"cannot write {path}: {e.strerror or e}") from None

        return write_now

    def save_labels(self, path=None) -> list[str]:
        """Write the label map of the annotation in front with its sidecar now, on this thread
        (``path`` None: back to the file it was opened from); returns the files."""
        annotation, _, _ = self.current()
        path = path or self.in_place_path(annotation)
        if path is None:
            raise BadInputError("give a file to save to: this annotation was not opened from a label file")
        written = self._label_writer(path)()
        return self._labels_saved(annotation, written)

    def save_labels_soon(self, path):
        """Write the label map like :meth:`save_labels`, on a worker (unpacking and encoding a
        6000² map took 0.5–0.7 s); returns the worker, or ``None`` after one notification."""
        annotation, _, _ = self.current()
        try:
            write = self._label_writer(path)
        except BadInputError as e:
            report(e)
            return None
        self.saved_label.setText("saving …")
        self._label_worker = make_worker(write, returned=partial(self._labels_saved, annotation),
                                         errored=self._labels_not_saved)
        return start(self._label_worker, self.state.synchronous)

    @staticmethod
    def in_place_path(annotation) -> str | None:
        """The label raster an annotation was opened from, if it can be written back there."""
        source = annotation.source if annotation is not None else {}
        return source.get("path") if source.get("kind") == "labels" else None

    def _labels_saved(self, annotation, written: list[str]) -> list[str]:
        if annotation is not None:
            annotation.source = {"kind": "labels", "path": written[0]}
        self.saved_label.setText(f"saved {Path(written[0]).name} ({annotation.name})" if annotation
                                 else f"saved {Path(written[0]).name}")
        return written

    def _labels_not_saved(self, exc: BaseException) -> None:
        self.saved_label.setText("not saved")
        report(exc)

    def _save_dialog(self) -> None:
        annotation, _, _ = self.current()
        here = self.in_place_path(annotation)
        if here is not None:
            answer = QMessageBox.question(
                self, "Save labels", f"Save the labels back to {here}, replacing it?\n(No: choose another file.)",
                QMessageBox.Yes | QMessageBox.No | QMessageBox.Cancel, QMessageBox.Yes)
            if answer == QMessageBox.Yes:
                self.save_labels_soon(here)
                return
            if answer != QMessageBox.No:
                return
        start_at = Path(here or (annotation.image.path if annotation is not None and annotation.image.path else ""))
        name = (annotation.name if annotation is not None else "labels") + "_labels.tif"
        path, _ = QFileDialog.getSaveFileName(self, "Save labels", str(start_at.with_name(name) if here or
                                              start_at.name else name),
                                              "GeoTIFF (*.tif *.tiff);;Palette PNG (*.png)")
        if path:
            self.save_labels_soon(path)

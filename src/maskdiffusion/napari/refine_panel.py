"""The dock's Refine tab: correct a few strokes, the rest follows, without a model call.

Thin by design: the plane's :class:`~maskdiffusion.session.Session` refines, undoes and
changes classes; the :class:`~.annotation.Annotation` shows its map in the class layers. Heavy
work (building the refinement cache, refining a 6000² tile) runs on a worker thread, and results
are written into the layers a band of rows per event-loop turn.

- **Refine** (key ``R``) reassigns every pixel the annotator did not set. **Undo** / **Redo**
  (or Ctrl-Z / Ctrl-Shift-Z in any class layer) step through runs, strokes, refinements and
  class changes for all layers at once. **Live** refines at the end of each stroke.
- **Class by example**: a new class layer to paint, known to the session by its strokes only.
  Rename, remove (its pixels go to the best remaining class) and merge act on the session.
- **Confidence**: the margin between the two best classes, as an image layer; **Next unsure
  region** centres the view on the largest low-margin region not yet visited.

The tab works on the annotation of the selected layer (a class layer or its image), else the
one chosen in its list, else the latest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.classes import ClassSpec, default_color, new_class_id
from ..errors import BadInputError, NeedsFeaturesError
from .annotation import Annotation, AnnotatorState
from .layers import CONFIDENCE, SOFTWARE
from .notify import report
from .session_box import SessionBox
from .workers import make_worker, start

if TYPE_CHECKING:
    import napari

    from ..session import Session

__all__ = ["RefinePanel"]

CONFIDENCE_NAME = "unsure (refine)"
BUSY = "busy with the last step: try again when it is shown"
NO_ANNOTATION = "segment an image first (Segment tab), or open a result, a label file or a session"


class RefinePanel(QWidget):
    """Refine the class layers of a run from the annotator's strokes."""

    def __init__(self, viewer: napari.viewer.Viewer, state: AnnotatorState, parent=None):
        super().__init__(parent)
        self.viewer, self.state = viewer, state
        self._worker = None
        self._writing = None
        self._chosen: Annotation | None = None
        self._visited: list[tuple[int, int]] = []
        self._example_color = default_color(0)

        layout = QVBoxLayout(self)
        layout.addWidget(self._refine_box())
        layout.addWidget(self._class_box())
        layout.addWidget(self._confidence_box())
        self.session_box = SessionBox(viewer, state, self.current)
        layout.addWidget(self.session_box)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        viewer.bind_key("r", lambda _viewer: self.refine() if self.refine_button.isEnabled() else None,
                        overwrite=True)

    # ------------------------------------------------------------------ sections

    def _refine_box(self) -> QGroupBox:
        box = QGroupBox("Refine")
        form = QFormLayout(box)
        self.run_combo = QComboBox()
        self.run_combo.setToolTip("the image whose class layers you correct (follows the selected layer)")
        self.run_combo.activated.connect(self._choose)
        form.addRow("Image", self.run_combo)
        row = QHBoxLayout()
        self.refine_button = QPushButton("Refine (R)")
        self.refine_button.setToolTip("reassign every pixel you did not paint, learning from your strokes")
        self.refine_button.clicked.connect(self.refine)
        self.undo_button = QPushButton("Undo")
        self.undo_button.setToolTip("undo the last run, stroke, refinement or class change in every layer "
                                    "(Ctrl-Z in a class layer does the same)")
        self.undo_button.clicked.connect(lambda: self._step("undo"))
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(lambda: self._step("redo"))
        for button in (self.refine_button, self.undo_button, self.redo_button):
            row.addWidget(button)
        form.addRow(row)
        self.live_check = QCheckBox("Live: refine at the end of each stroke")
        form.addRow(self.live_check)
        return box

    def _class_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        form = QFormLayout(box)
        self.example_name = QLineEdit()
        self.example_name.setPlaceholderText("a class the text cannot name")
        self.color_button = QPushButton()
        self.color_button.clicked.connect(self._pick_color)
        self._show_color()
        add = QPushButton("Add by example")
        add.setToolTip("adds a class layer to paint; the class is learnt from your strokes alone")
        add.clicked.connect(lambda: self.add_example_class(self.example_name.text(), self._example_color))
        row = QHBoxLayout()
        row.addWidget(self.example_name, 1)
        row.addWidget(self.color_button)
        row.addWidget(add)
        form.addRow("New", row)
        self.class_combo, self.merge_combo = QComboBox(), QComboBox()
        remove, merge = QPushButton("Remove"), QPushButton("Merge into")
        remove.setToolTip("its pixels go to the best remaining class (deleting its layer leaves them unlabelled; "
                          "rename a class by renaming its layer)")
        remove.clicked.connect(lambda: self.remove_class(self.class_combo.currentText()))
        merge.clicked.connect(lambda: self.merge_class(self.class_combo.currentText(), self.merge_combo.currentText()))
        row = QHBoxLayout()
        for widget, stretch in ((self.class_combo, 1), (remove, 0), (merge, 0), (self.merge_combo, 1)):
            row.addWidget(widget, stretch)
        form.addRow("Class", row)
        return box

    def _confidence_box(self) -> QGroupBox:
        box = QGroupBox("Confidence")
        row = QHBoxLayout(box)
        self.confidence_check = QCheckBox("Show margin layer")
        self.confidence_check.toggled.connect(lambda on: self.update_confidence() if on else None)
        unsure = QPushButton("Next unsure region")
        unsure.clicked.connect(self.next_unsure_region)
        row.addWidget(self.confidence_check)
        row.addWidget(unsure)
        return box

    # ------------------------------------------------------------------ the annotation in front

    def annotations(self) -> list[Annotation]:
        return list(self.state.annotations.values())

    def current(self) -> tuple[Annotation | None, tuple[int, ...], Session | None]:
        """The annotation in front, the plane the viewer shows of it and that plane's session:
        the selected layer's (none for an image not annotated yet), else the one chosen in the
        list, else the latest."""
        annotations = self.annotations()
        active = self.viewer.layers.selection.active
        found = self.state.annotation_of(active)
        if found is None and not (hasattr(active, "rgb") and active.metadata.get("kind") is None):
            found = self._chosen if self._chosen in annotations else annotations[-1] if annotations else None
        if found is None:
            return None, (), None
        plane = found.current_plane()
        return found, plane, found.session(plane)

    def _choose(self, index: int) -> None:
        annotations = self.annotations()
        if 0 <= index < len(annotations):
            self._chosen = annotations[index]
            layers = self._chosen.ordered_layers()
            if layers:
                self.viewer.layers.selection.active = layers[0]
        self.refresh()

    def reset_choices(self, *_) -> None:
        """Refill the image list and show the annotation in front."""
        annotations = self.annotations()
        current, _, _ = self.current()
        self.run_combo.blockSignals(True)
        self.run_combo.clear()
        self.run_combo.addItems([a.name for a in annotations])
        if current in annotations:
            self.run_combo.setCurrentIndex(annotations.index(current))
        self.run_combo.blockSignals(False)
        self.refresh()

    def refresh(self) -> None:
        _, _, session = self.current()
        names = [c.name for c in session.classes] if session is not None else []
        for combo in (self.class_combo, self.merge_combo):
            keep = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if keep in names:
                combo.setCurrentText(keep)
            combo.blockSignals(False)
        busy = self._worker is not None or self._writing is not None
        self.refine_button.setEnabled(session is not None and not busy)
        self.undo_button.setEnabled(session is not None and bool(session.history) and not busy)
        self.redo_button.setEnabled(session is not None and bool(session.future) and not busy)
        if session is None:
            self.refine_button.setToolTip(NO_ANNOTATION)
        elif not session.can_refine:
            self.refine_button.setToolTip(NeedsFeaturesError.message)
        else:
            self.refine_button.setToolTip("reassign every pixel you did not paint, learning from your strokes")

    def on_change(self, annotation: Annotation, what: str) -> None:
        """An annotation changed (a stroke, a class, an undo): show it; Live refines after strokes."""
        self.session_box.dirty = True
        self._visited.clear()
        self.reset_choices()
        if what == "paint" and self.live_check.isChecked() and self.refine_button.isEnabled():
            QTimer.singleShot(0, self.refine)

    # ------------------------------------------------------------------ refine and undo

    def _session(self, needs_features: bool = False):
        """The annotation in front, its plane and that plane's session; ``None`` (and one line)
        when there is nothing to work on."""
        annotation, plane, session = self.current()
        if session is None:
            self.status.setText(NO_ANNOTATION)
            return annotation, plane, None
        if needs_features and not session.can_refine:
            self.status.setText(NeedsFeaturesError.message)
            return annotation, plane, None
        return annotation, plane, session

    def refine(self) -> None:
        """Refine the annotation in front: take the latest strokes (in bands over event-loop
        turns), then refine on a worker and show the result the same way."""
        annotation, plane, session = self._session(needs_features=True)
        if session is None or self._worker is not None:
            return
        if not annotation.sync_soon(plane, lambda: self._refine_synced(annotation, plane, session)):
            self.status.setText(BUSY)

    def _refine_synced(self, annotation: Annotation, plane, session) -> None:
        if not session.edited.any():
            self.status.setText("nothing to learn from: paint a few strokes in the class layers first")
            return
        self.status.setText("refining …" if session.prepared else "building the refinement cache, then refining …")

        def work():
            session.accept_refinement(*session.propose_refinement())
            return session.history[-1]

        def then(step):
            message = f"refined from {session.edited.sum()} painted pixels: {step.n_changed} pixels changed"

            def done():
                self._writing = None
                self._after_change(message)

            self._writing = done  # the layers show the result a band of rows per event-loop turn
            annotation.show(plane, step.changed, done)

        annotation.in_background(work, then)

    def background(self, work, then) -> None:
        """Run ``work`` on a worker thread, then ``then(result)`` on the interface's thread."""
        self._worker = worker = make_worker(work, returned=then, errored=self._on_error,
                                            finished=self._on_worker_finished)
        self.refresh()
        start(worker, self.state.synchronous)

    def _on_error(self, exc: BaseException) -> None:
        for annotation in self.annotations():
            if annotation.busy:  # the step that failed never released it
                annotation.busy = 0
                annotation.hold_layers()
        self.status.setText("failed (see the notification)")
        report(exc)

    def _on_worker_finished(self) -> None:
        self._worker = None
        self.refresh()

    def _after_change(self, message: str) -> None:
        self.session_box.dirty = True
        self._visited.clear()
        if self.confidence_check.isChecked():
            self.update_confidence()
        self.status.setText(message)
        self.refresh()

    def _step(self, method: str) -> None:
        annotation, plane, session = self._session()
        if session is not None and getattr(annotation, method)(plane):
            self.status.setText(f"{method} …")

    # ------------------------------------------------------------------ classes

    def _class_change(self, action, message: str, needs_features: bool = True) -> None:
        """A class change on every plane of the annotation (the cache built on a worker first when
        it needs one), then its layers brought in line and shown."""
        annotation, plane, session = self._session(needs_features)
        if session is None:
            return

        def done(_=None):
            try:
                annotation.change_classes(action)
            except BadInputError as e:
                report(e)
                return
            self._after_change(message)

        def synced():
            if not needs_features or all(s.prepared for s in annotation.sessions.values()):
                done()
                return
            self.status.setText("building the refinement cache …")
            annotation.in_background(lambda: [s.prepare() for s in annotation.sessions.values()], done)

        if not annotation.sync_soon(plane, synced):
            self.status.setText(BUSY)

    def add_example_class(self, name: str, color=None) -> None:
        """Add a class defined by its strokes: a new class layer, selected for painting."""
        spec = ClassSpec(name, (), tuple(color) if color is not None else None) if name.strip() else None
        if spec is None:
            report(BadInputError("give the new class a name"))
            return
        class_id = new_class_id()

        def add(session, group):
            session.add_class(spec, class_id, group)

        def added():
            annotation, _, _ = self.current()
            layer = annotation.layers.get(class_id) if annotation is not None else None
            if layer is not None:
                self.viewer.layers.selection.active = layer
            self._example_color = default_color(len(self.class_combo) + 1)
            self._show_color()
            self.example_name.clear()

        self._class_change(add, f"added {name!r}: paint a few strokes of it, then Refine", needs_features=False)
        QTimer.singleShot(0, added)

    def remove_class(self, name: str) -> None:
        self._class_change(lambda s, group: s.remove_class(s.class_index(name)), f"removed {name!r}")

    def merge_class(self, source: str, into: str) -> None:
        if source.lower() != into.lower():
            self._class_change(lambda s, group: s.merge_classes([s.class_index(source)], s.class_index(into)),
                               f"merged {source!r} into {into!r}")

    # ------------------------------------------------------------------ confidence

    def _margin(self):
        """The annotation in front, its plane, session and first layer when the session has a
        margin (a refinement or a run's draft made it), else ``None``."""
        annotation, plane, session = self.current()
        layers = annotation.ordered_layers() if annotation is not None else []
        if session is None or session.margin is None or not layers:
            return None
        return annotation, plane, session, layers[0]

    def update_confidence(self):
        """Show the session's grid margin as an image layer aligned with the class layers."""
        found = self._margin()
        if found is None:
            return None
        annotation, _, session, ref = found
        stride = session.state.stride
        scale = np.asarray(ref.scale[-2:], float)
        kwargs = {"scale": tuple(scale * stride), "translate": tuple(np.asarray(ref.translate[-2:])
                                                                     + scale * (stride - 1) / 2)}
        layer = next((ly for ly in self.viewer.layers if ly.metadata.get("role") == "refine"
                      and ly.metadata.get("annotation") == annotation.id), None)
        if layer is None:
            meta = {"software": SOFTWARE, "kind": CONFIDENCE, "image": annotation.name, "role": "refine",
                    "annotation": annotation.id}
            layer = self.viewer.add_image(session.margin, name=CONFIDENCE_NAME, colormap="magma", opacity=0.5,
                                          metadata=meta, blending="translucent", **kwargs)
        else:
            layer.data = session.margin
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        layer.contrast_limits = (0.0, float(max(np.quantile(session.margin, 0.95), 1e-6)))
        return layer

    def next_unsure_region(self):
        """Centre the view on the largest low-margin region not visited since the last change."""
        found = self._margin()
        if found is None:
            self.status.setText("refine once to know where the segmentation is unsure")
            return None
        _, plane, session, ref = found
        from ..core.confidence import next_unsure_region

        stride = session.state.stride
        found = next_unsure_region(session.margin, step=1, visited=self._visited)
        if found is None:
            self._visited.clear()
            self.status.setText("no more unsure regions: starting over")
            return None
        (gy, gx), _ = found
        self._visited.append((gy, gx))
        pixel = (gy * stride + (stride - 1) / 2, gx * stride + (stride - 1) / 2)
        world = ref.data_to_world((*plane, *pixel))
        camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved it to the scene
        camera.center = tuple(world[-2:]) if self.viewer.dims.ndisplay == 2 else tuple(world)
        self.status.setText(f"unsure region around row {int(pixel[0])}, column {int(pixel[1])}")
        return pixel

    def _pick_color(self) -> None:
        color = QColorDialog.getColor(QColor(*self._example_color), self, "Colour of the new class")
        if color.isValid():
            self._example_color = (color.red(), color.green(), color.blue())
            self._show_color()

    def _show_color(self) -> None:
        r, g, b = self._example_color
        self.color_button.setStyleSheet(f"background-color: rgb({r}, {g}, {b}); min-width: 24px;")

"""The dock's Segment tab: pick an image, a model and classes; run in the background.

Thin by design: the engine segments (:mod:`.runs` on a napari ``thread_worker``: progress per
tile, Cancel at the next tile), :mod:`.results` puts the result into the viewer in pieces.
Layers change only when the run returns, so a cancelled or failed run leaves the viewer as it
was.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, create_widget
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.classes import ClassListError, read_class_file, write_class_file
from ..errors import BadInputError
from .class_table import ClassEditor, class_line
from .garbage import settle
from .images import current_plane, describe_image, read_plane
from .model_box import ModelBox
from .notify import report
from .params_form import params_form, params_from_form
from .settings import load_settings, save_settings
from .state import AFTER_SHOW_MS, AnnotatorState, Turn, next_turn

if TYPE_CHECKING:
    import napari

__all__ = ["SegmentPanel"]

CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"


def _time_left(seconds: float) -> str:
    if seconds < 90:
        return f"about {max(1, round(seconds))} s left"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min left"
    return f"about {seconds / 3600:.1f} h left"


class FrameProgressBar(QProgressBar):
    """A progress bar whose new value is painted with the window's next frame.

    ``QProgressBar.setValue`` repaints at once. In a window that holds napari's OpenGL canvas
    that composes a whole window frame there and then (20–30 ms under Xvfb's software renderer,
    70–100 ms when the canvas has changed since), and the canvas's own frame follows: two
    frames per tile instead of one.
    """

    def setValue(self, value: int) -> None:  # noqa: N802 (Qt's name)
        self.setUpdatesEnabled(False)
        try:
            super().setValue(value)
        finally:
            self.setUpdatesEnabled(True)


class SegmentPanel(QWidget):
    """Zero-shot segmentation from class names into one editable Labels layer per class."""

    def __init__(self, viewer: napari.viewer.Viewer, state: AnnotatorState, parent=None):
        super().__init__(parent)
        self.viewer, self.state = viewer, state
        self.settings = load_settings()
        self._worker = None
        self._steps = None
        self._applying = None
        self._preparing = None
        self._progress: dict = {}
        self._bands_key = None
        self._picked = None

        layout = QVBoxLayout(self)
        layout.addWidget(self._image_box())
        self.model_box = ModelBox(state, self.settings)
        self.model_box.changed.connect(self._update_buttons)
        layout.addWidget(self.model_box)
        layout.addWidget(self._class_box())
        layout.addWidget(self._params_box())
        layout.addLayout(self._run_row())
        self.progress_bar = FrameProgressBar()
        self.progress_bar.setVisible(False)
        layout.addWidget(self.progress_bar)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.classes_editor.set_classes(self.settings.classes or [])
        self._on_image_changed()

    # ------------------------------------------------------------------ sections

    def _image_box(self) -> QGroupBox:
        box = QGroupBox("Image")
        self.image_picker = create_widget(annotation=Image, label="Layer", name="image")
        self.image_picker.changed.connect(self._on_image_changed)
        self._band_names: list[str] = []
        self.band_pickers = [ComboBox(label=c, name=f"band_{c}", choices=lambda _widget: self._band_names)
                             for c in "RGB"]
        self.planes_picker = ComboBox(choices=[CURRENT_PLANE, ALL_PLANES], label="Planes", name="planes")
        self.image_form = Container(widgets=[self.image_picker, *self.band_pickers, self.planes_picker])
        QVBoxLayout(box).addWidget(self.image_form.native)
        return box

    def _class_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        column = QVBoxLayout(box)
        self.classes_editor = ClassEditor()
        self.classes_editor.changed.connect(self._update_buttons)
        column.addWidget(self.classes_editor)
        column.addLayout(self.classes_editor.buttons(self._load_classes_dialog, self._save_classes_dialog))
        return box

    def _params_box(self) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        toggle = QToolButton()
        toggle.setText("Parameters")
        toggle.setCheckable(True)
        toggle.setToolButtonStyle(Qt.ToolButtonTextBesideIcon)
        toggle.setArrowType(Qt.RightArrow)
        self.parameters = params_form()
        self.semantic_check = QCheckBox("semantic map layer")
        self.confidence_check = QCheckBox("confidence layer")
        extra = QWidget()
        extra_row = QHBoxLayout(extra)
        extra_row.setContentsMargins(0, 0, 0, 0)
        extra_row.addWidget(QLabel("Also add"))
        extra_row.addWidget(self.semantic_check)
        extra_row.addWidget(self.confidence_check)
        body = QWidget()
        body_column = QVBoxLayout(body)
        body_column.setContentsMargins(0, 0, 0, 0)
        body_column.addWidget(self.parameters.native)
        body_column.addWidget(extra)
        body.setVisible(False)

        def show(on: bool) -> None:
            body.setVisible(on)
            toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)

        toggle.toggled.connect(show)
        self.params_toggle = toggle
        column.addWidget(toggle)
        column.addWidget(body)
        return box

    def _run_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button, 1)
        row.addWidget(self.cancel_button)
        return row

    # ------------------------------------------------------------------ choices

    def reset_choices(self, *_) -> None:
        """Refill the layer picker (napari calls this when layers change): the picked image stays
        picked; with none (or a removed one) the image in view is picked."""
        picked = self._picked
        self.image_form.reset_choices()
        if picked is not None and picked in self.viewer.layers:
            self.image_picker.value = picked
        elif not self.running:
            shown = self.shown_image()
            if shown is not None:
                self.image_picker.value = shown
        self._update_buttons()

    def shown_image(self) -> Image | None:
        """The image the annotator looks at: the active layer if it is an image, else the
        topmost visible image."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and active.metadata.get("kind") is None:
            return active
        visible = [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.visible
                   and ly.metadata.get("kind") is None]
        return visible[-1] if visible else None

    def follow_selection(self) -> None:
        """Pick the image the annotator selects (not while a run uses the current one)."""
        active = self.viewer.layers.selection.active
        if not self.running and isinstance(active, Image) and active.metadata.get("kind") is None:
            self.image_picker.value = active

    def image_layer(self) -> Image | None:
        layer = self.image_picker.value
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_image_changed(self, *_) -> None:
        layer = self.image_layer()
        self._picked = layer
        info = describe_image(layer) if layer is not None else None
        bands = info is not None and info.n_bands > 1 and not layer.rgb
        for picker in self.band_pickers:
            picker.visible = bands
        self.planes_picker.visible = info is not None and info.n_planes > 1
        key = (info.name, info.band_names) if bands else None
        if bands and key != self._bands_key:
            self._band_names = list(info.band_names)
            for picker, band in zip(self.band_pickers, info.default_bands()):
                picker.reset_choices()
                picker.value = info.band_names[band]
        self._bands_key = key
        self._update_buttons()

    def bands(self) -> tuple[int, ...] | None:
        layer = self.image_layer()
        if layer is None:
            return None
        info = describe_image(layer)
        if info.n_bands <= 1 or layer.rgb:
            return None
        return tuple(info.band_names.index(picker.value) for picker in self.band_pickers)

    def classes(self):
        return self.classes_editor.classes()

    def set_classes(self, classes) -> None:
        self.classes_editor.set_classes(classes)

    def params(self):
        return params_from_form(self.parameters, bands=self.bands())

    @property
    def running(self) -> bool:
        """A run is segmenting, or its layers are still being added."""
        return self._worker is not None or self._applying is not None

    def _update_buttons(self, *_) -> None:
        ready, loading = self.model_box.ready, self.model_box.loading
        has_image = self.image_layer() is not None
        self.run_button.setEnabled(ready and not self.running and not loading and has_image
                                   and not self.classes_editor.error)
        self.cancel_button.setEnabled(self._worker is not None)
        self.model_box.load_button.setEnabled(not loading and not self.running)
        if not has_image:
            tip = "open an image first (File › Open, or File › Open Sample › MaskDiffusion)"
        elif loading:
            tip = "the model is loading"
        elif not ready:
            tip = "load the model first"
        elif self.classes_editor.error:
            tip = self.classes_editor.error
        else:
            tip = "segment the image into the classes"
        self.run_button.setToolTip(tip)

    # ------------------------------------------------------------------ run

    def run(self):
        """Start segmenting the chosen image; returns the worker (``None`` if the input is bad)."""
        layer = self.image_layer()
        if layer is None or not self.model_box.ready or self.running:
            return None
        try:
            params = self.params()
            classes = self.classes()
            if not classes and not params.unsupervised:
                raise ClassListError("no classes: type a few names, e.g. tree, grass, road (or set Unsupervised)")
            image = describe_image(layer)
        except BadInputError as e:
            report(e)
            return None
        if image.n_planes > 1 and self.planes_picker.value == CURRENT_PLANE:
            planes = image.planes(current_plane(layer, image, self.viewer.dims.point))
        else:
            planes = image.planes()
        from .runs import segment_planes

        self.settings.classes = class_line(classes)
        save_settings(self.settings)
        self._progress = {"layer": layer, "image": image, "planes": planes, "start": None, "classes": classes,
                          "unsupervised": bool(params.unsupervised),
                          "semantic": self.semantic_check.isChecked(), "confidence": self.confidence_check.isChecked()}
        params = params.replace(return_confidence=self.confidence_check.isChecked())
        self._steps = segment_planes(partial(read_plane, layer, image), planes, classes, self.state.model, params)
        self._worker = worker = create_worker(lambda: (yield from self._steps), _start_thread=False,
                                              _ignore_errors=True)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status.setText(f"segmenting {layer.name!r}: loading …")
        self._update_buttons()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the run at the next tile; the viewer stays as it was."""
        if self._worker is not None:
            self.status.setText("cancelling at the next tile …")
            self._worker.quit()

    def _on_progress(self, item) -> None:
        from .runs import PlaneStarted

        job = self._progress
        if self._worker is None or self._worker.abort_requested or not job:
            return
        if isinstance(item, PlaneStarted):
            job["plane"], job["planes_total"] = item.index, item.count
            return
        if item.stage == "load" or item.total <= 0:
            return
        if item.region is not None and job["classes"] and not job["unsupervised"]:
            self._show_region(job, item)
        plane, n_planes = job.get("plane", 0), job.get("planes_total", 1)
        done, total = plane * item.total + item.done, n_planes * item.total
        if job["start"] is None:
            job["start"], job["start_done"] = time.perf_counter(), done - 1
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        where = f"plane {plane + 1}/{n_planes}, " if n_planes > 1 else ""
        text = f"{where}tile {item.done}/{item.total}"
        elapsed, finished = time.perf_counter() - job["start"], done - job["start_done"]
        if finished >= 1 and done < total:
            text += f", {_time_left(elapsed / finished * (total - done))}"
        self.status.setText(text)

    def _show_region(self, job: dict, step) -> None:
        """Paint a region the engine finished (or drafted) into the class layers as it arrives."""
        from .live_labels import LiveLabels

        if job.get("live") is None:
            job["live"] = LiveLabels(self.viewer, self.state, job["layer"], job["image"], job["classes"])
        job["live"].add(job["planes"][job.get("plane", 0)], step.region, step.labels)

    def _on_returned(self, results) -> None:
        from .results import apply_results

        job = self._progress
        live = job.pop("live", None)
        if job.get("layer") not in self.viewer.layers:
            if live is not None:
                live.take_back()
            self.status.setText("the image was removed during the run: nothing was added")
            return
        streamed = live.release() if live is not None else None
        self._applying = apply_results(self.viewer, self.state, job["layer"], job["image"], results,
                                       semantic=job["semantic"], confidence=job["confidence"],
                                       current_plane=self.current_plane, streamed=streamed)
        self.status.setText("adding the layers …")
        next_turn(self._apply_next)

    def current_plane(self) -> tuple[int, ...]:
        job_image = self._progress.get("image") if self._progress else None
        ndim = len(job_image.stack_shape) if job_image is not None else 0
        return tuple(int(i) for i in self.viewer.dims.current_step[:ndim])

    def _apply_next(self) -> None:
        """Pieces of the result for one :class:`~.state.Turn` of the event loop, so the interface
        never freezes for all of it; a layer shown ends the turn (see :mod:`.results`)."""
        if self._applying is None:
            return
        turn, delay = Turn(), 1
        try:
            while turn.fits():
                if next(self._applying):
                    delay = AFTER_SHOW_MS
                    break
        except StopIteration as stop:
            next_turn(partial(self._finish, self._applying, stop.value))
            return
        except Exception as e:
            self._applying = None
            self._update_buttons()
            report(e)
            return
        next_turn(self._apply_next, delay)

    def _finish(self, applying, applied) -> None:
        """The run is in the viewer (a turn after its last piece): say so, build its caches."""
        if self._applying is not applying:
            return
        self._applying = None
        n = len(applied.run.classes)
        if applied.added:
            self.status.setText(f"done: {n} classes, {len(applied.added)} new layers")
        else:
            self.status.setText(f"done: {n} classes, the layers were updated (Ctrl-Z in any of them undoes the run)")
        if applied.replaced_edits:
            names = ", ".join(applied.replaced_edits)
            self.status.setText(self.status.text() + f"; your strokes in {names} were replaced")
            show_warning(f"MaskDiffusion replaced your strokes in {names}: Ctrl-Z in a class layer brings them back")
        elif applied.updated:
            show_info("MaskDiffusion updated the layers: Ctrl-Z in a class layer undoes this run")
        self._update_buttons()
        next_turn(partial(self._rest, applied.run))

    def _rest(self, run) -> None:
        """The run is shown: freeze what is alive out of the collector's walk (a 20–40 ms
        collection at 6000², alone in its turn, not while the cache build starts), then build
        the run's refinement caches on a worker (a Refine clicked first waits for them)."""
        from .runs import prepare_sessions

        settle(self)
        sessions = [s for s in run.sessions.values() if s.can_refine and not s.prepared]
        if sessions:
            self._preparing = worker = create_worker(prepare_sessions, sessions, _start_thread=False,
                                                     _ignore_errors=True)
            worker.finished.connect(partial(setattr, self, "_preparing", None))
            worker.start()

    def _take_back(self) -> None:
        live = self._progress.pop("live", None) if self._progress else None
        if live is not None:
            live.take_back()

    def _on_error(self, exc: BaseException) -> None:
        self._take_back()
        self.status.setText("failed (see the notification)")
        report(exc)

    def _on_aborted(self) -> None:
        self._take_back()
        self.status.setText("cancelled: no layer was changed")

    def _on_finished(self) -> None:
        if self._steps is not None:
            self._steps.close()
        self._worker = self._steps = None
        self.progress_bar.setVisible(False)
        self._update_buttons()

    def stop(self) -> None:
        """Quit a run whose dock is gone: its result is dropped."""
        worker = self._worker
        if worker is not None:
            for signal in (worker.yielded, worker.returned, worker.errored, worker.aborted):
                signal.disconnect()
            worker.quit()
        self._take_back()
        self._applying = None

    # ------------------------------------------------------------------ class files

    def load_class_file(self, path) -> None:
        try:
            self.set_classes(read_class_file(path))
        except ClassListError as e:
            report(e)

    def save_class_file(self, path) -> None:
        try:
            write_class_file(path, self.classes())
        except (ClassListError, OSError) as e:
            report(BadInputError(f"cannot save the class list: {e}"))

    def _load_classes_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load class list", "", "Class lists (*.json *.txt);;All files (*)")
        if path:
            self.load_class_file(path)

    def _save_classes_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save class list", "classes.json", "JSON (*.json)")
        if path:
            self.save_class_file(path)

"""The dock's Segment tab: pick an image, a model and classes; run in the background.

Thin by design: the engine segments (:mod:`.workers` on a napari ``thread_worker``: progress
per tile, Cancel at the next tile), and the image's :class:`~.annotation.Annotation` paints the
rows as they come and makes the result its sessions; a cancelled or failed run takes its rows
and layers back, so the viewer is as it was.
"""

from __future__ import annotations

import time
from functools import partial
from typing import TYPE_CHECKING

from magicgui.widgets import ComboBox, Container, create_widget
from napari.layers import Image
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ..core.classes import format_class_list
from ..errors import BadInputError
from .annotation import Annotation, AnnotatorState
from .class_table import ClassEditor
from .images import current_plane, describe_image, read_plane
from .model_box import ModelBox
from .notify import report
from .params_form import params_form, params_from_form
from .settings import load_settings, save_settings
from .workers import make_worker, start

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
        self._preparing = None
        self._progress: dict = {}
        self._bands_key = None
        self._picked = None
        self._known_images = [ly for ly in viewer.layers if isinstance(ly, Image)]

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
        column.addLayout(self.classes_editor.buttons())
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
        self.parameters.changed.connect(self._update_buttons)
        body = self.parameters.native
        body.setVisible(False)

        def show(on: bool) -> None:
            body.setVisible(on)
            toggle.setArrowType(Qt.DownArrow if on else Qt.RightArrow)

        toggle.toggled.connect(show)
        self.params_toggle = toggle
        self.params_error = QLabel("")
        self.params_error.setWordWrap(True)
        self.params_error.setStyleSheet("color: #ff6060;")
        self.params_error.setVisible(False)
        column.addWidget(toggle)
        column.addWidget(body)
        column.addWidget(self.params_error)
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
        """Refill the layer picker (napari calls this when layers change): an image just opened
        is picked (it is the one in view); else the picked image stays picked; with none (or a
        removed one) the image in view is picked."""
        picked = self._picked
        images = [ly for ly in self.viewer.layers if isinstance(ly, Image) and ly.metadata.get("kind") is None]
        opened = [ly for ly in images if not any(ly is known for known in self._known_images)]
        self._known_images = images
        self.image_form.reset_choices()
        if opened and not self.running:
            self.image_picker.value = opened[-1]
        elif picked is not None and picked in self.viewer.layers:
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
        if layer is not self._picked and not self.running:
            self.status.setText("")  # it spoke of another image
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
        if not all(picker.value in info.band_names for picker in self.band_pickers):  # another image's, until reset
            return info.default_bands()
        return tuple(info.band_names.index(picker.value) for picker in self.band_pickers)

    def classes(self):
        return self.classes_editor.classes()

    def set_classes(self, classes) -> None:
        self.classes_editor.set_classes(classes)

    def params(self):
        return params_from_form(self.parameters, bands=self.bands())

    @property
    def running(self) -> bool:
        """A run is segmenting."""
        return self._worker is not None

    def _input_error(self) -> str:
        """What keeps the classes or the parameters from running, shown under the parameters."""
        try:
            params = self.params()
        except BadInputError as e:
            return str(e)
        if self.classes_editor.error:
            return self.classes_editor.error
        if not self.classes_editor.table.rowCount() and not params.unsupervised:
            return "no classes: type a few names, e.g. tree, grass, road (or set Unsupervised)"
        return ""

    def _update_buttons(self, *_) -> None:
        ready, loading = self.model_box.ready, self.model_box.loading
        has_image = self.image_layer() is not None
        error = self._input_error()
        self.params_error.setText(error if error and not self.classes_editor.error else "")
        self.params_error.setVisible(bool(self.params_error.text()))
        self.run_button.setEnabled(ready and not self.running and not loading and has_image and not error)
        self.cancel_button.setEnabled(self._worker is not None)
        self.model_box.load_button.setEnabled(not loading and not self.running)
        if not has_image:
            tip = "open an image first (File › Open, or File › Open Sample › MaskDiffusion)"
        elif loading:
            tip = "the model is loading"
        elif not ready:
            tip = "load the model first"
        else:
            tip = error or "segment the image into the classes"
        self.run_button.setToolTip(tip)

    # ------------------------------------------------------------------ run

    def _annotation_for(self, layer, image, classes, planes) -> Annotation:
        """The image's annotation when this run can update it (the same classes, or every plane
        it has is run again), else a new one."""
        import weakref

        found = self.state.annotation_of(layer)
        names = [c.name.lower() for c in classes]
        if (found is not None and found.run is None and found.image.shape == image.shape
                and ([spec.name.lower() for _, spec in found.classes] == names or set(found.sessions) <= set(planes))):
            return found
        return self.state.add(Annotation(self.viewer, image, image_ref=weakref.ref(layer)))

    def run(self):
        """Start segmenting the chosen image; returns the worker (``None`` if the input is bad)."""
        layer = self.image_layer()
        if layer is None or not self.model_box.ready or self.running:
            return None
        error = self._input_error()
        if error:
            report(BadInputError(error))
            return None
        params, classes, image = self.params(), self.classes(), describe_image(layer)
        if image.n_planes > 1 and self.planes_picker.value == CURRENT_PLANE:
            planes = image.planes(current_plane(layer, image, self.viewer.dims.point))
        else:
            planes = image.planes()
        from ..engine import iter_segment_planes

        self.settings.classes = format_class_list(classes)
        save_settings(self.settings)
        annotation = self._annotation_for(layer, image, classes, planes)
        annotation.start_run([] if params.unsupervised else classes)
        self._progress = {"layer": layer, "image": image, "planes": planes, "start": None, "annotation": annotation}
        params = params.replace(return_confidence=False)
        self._steps = iter_segment_planes(partial(read_plane, layer, image), planes, classes, self.state.model, params)
        self._worker = worker = make_worker(lambda: (yield from self._steps), yielded=self._on_progress,
                                            returned=self._on_returned, errored=self._on_error,
                                            aborted=self._on_aborted, finished=self._on_finished)
        self.progress_bar.setRange(0, 0)
        self.progress_bar.setVisible(True)
        self.status.setText(f"segmenting {layer.name!r}: loading …")
        self._update_buttons()
        return start(worker, self.state.synchronous)

    def cancel(self) -> None:
        """Stop the run at the next tile; the viewer is put back as it was."""
        if self._worker is not None:
            self.status.setText("cancelling at the next tile …")
            self._worker.quit()

    def _on_progress(self, item) -> None:
        from ..engine import PlaneStarted

        job = self._progress
        if self._worker is None or self._worker.abort_requested or not job:
            return
        if isinstance(item, PlaneStarted):
            job["plane"], job["planes_total"] = item.index, item.count
            return
        if item.stage == "load" or item.total <= 0:
            if item.message:  # OpenVINO's one-time conversion says what it does and that it is once
                self.status.setText(item.message)
            return
        if item.region is not None and job["annotation"].run.classes:
            job["annotation"].show_rows(job["planes"][job.get("plane", 0)], item.region, item.labels)
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

    def _on_returned(self, results) -> None:
        if self._worker is not None and self._worker.abort_requested:  # Cancel came after the last tile
            self._on_aborted()
            return
        if self._progress["layer"] not in self.viewer.layers:
            self._take_back()
            self.status.setText("the image was removed during the run: nothing was added")
            return
        job, self._progress = self._progress, {}
        annotation: Annotation = job["annotation"]
        changed = annotation.finish_run(results, partial(self._session_info, job))
        n = len(annotation.classes)
        if changed["added"] and not changed["replaced"] and len(annotation.sessions) == len(results):
            self.status.setText(f"done: {n} classes, {len(changed['added'])} new layers")
        else:
            self.status.setText(f"done: {n} classes, the layers were updated (Ctrl-Z in any of them undoes the run)")
        if changed["replaced"]:
            names = ", ".join(changed["replaced"])
            self.status.setText(self.status.text() + f"; your strokes in {names} were replaced")
            show_warning(f"MaskDiffusion replaced your strokes in {names}: Ctrl-Z in a class layer brings them back")
        if changed["deleted"]:
            show_info(f"{', '.join(changed['deleted'])} deleted during the run: the run brought the class back; "
                      "delete its layer again to delete the class")
        layers = annotation.ordered_layers()
        if layers:
            self.viewer.layers.selection.active = layers[0]
        sessions = [s for s in annotation.sessions.values() if s.can_refine and not s.prepared]
        if sessions:
            from .workers import prepare_sessions

            self._preparing = make_worker(prepare_sessions, sessions,
                                          finished=partial(setattr, self, "_preparing", None))
            start(self._preparing, self.state.synchronous)

    def _session_info(self, job: dict, plane) -> dict:
        image = job["image"]
        return {"layer": image.name, "path": image.path, "georeference": image.georeference, "plane": list(plane),
                "shape": list(image.shape[-2:])}

    def _take_back(self) -> None:
        """Drop the run in progress: the rows and layers it added go, the viewer is as it was."""
        job, self._progress = self._progress, {}
        if job:
            job["annotation"].cancel_run()
            if not job["annotation"].sessions:
                self.state.forget(job["annotation"])

    def _on_error(self, exc: BaseException) -> None:
        self._take_back()
        self.status.setText("failed (see the notification)")
        report(exc)

    def _on_aborted(self) -> None:
        self._take_back()
        self.status.setText("cancelled: the layers are as they were")

    def _on_finished(self) -> None:
        if self._progress:  # quit after the last tile: napari emits neither returned nor aborted
            self._on_aborted()
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

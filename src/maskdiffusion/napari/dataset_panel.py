"""The dock's Dataset tab: a folder of images annotated one after another, in the same layers.

Thin by design: :mod:`maskdiffusion.dataset` keeps the project (images, statuses, classes,
settings, the class memory, its lock), drafts an image and saves its labels; this tab shows one
image at a time in one image layer and one annotation's class layers. **Next** / **Previous**
(Page Down / Page Up) save the labels into the output folder and show the next image with its
draft; while the annotator corrects one image, a worker drafts the next ones. The classes and
parameters are the Segment tab's, the project's once it is open.
"""

from __future__ import annotations

import weakref
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import BadInputError
from .annotation import Annotation, AnnotatorState
from .images import describe_image, image_layer_data
from .notify import report
from .workers import make_worker, start

if TYPE_CHECKING:
    import napari

    from .segment_panel import SegmentPanel

__all__ = ["DatasetPanel"]


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


class DatasetPanel(QWidget):
    """A project: images source, output folder, the image list with statuses, Next / Previous."""

    def __init__(self, viewer: napari.viewer.Viewer, state: AnnotatorState, segment: SegmentPanel, parent=None):
        super().__init__(parent)
        self.viewer, self.state, self.segment = viewer, state, segment
        self.project = None
        self.index: int | None = None
        self.shown: int | None = None
        self.annotation: Annotation | None = None
        self.drafts: dict = {}
        self._drafting: dict = {}
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.images_edit, self.output_edit = QLineEdit(), QLineEdit()
        self.images_edit.setPlaceholderText("a folder, a glob (tiles/*_RGB.tif) or a list file")
        self.output_edit.setPlaceholderText("where labels, drafts and the project file go")
        form.addRow("Images", self._path_row(self.images_edit, folder=True, file=True))
        form.addRow("Output", self._path_row(self.output_edit, folder=True))
        layout.addLayout(form)
        self.open_button = QPushButton("Open project")
        self.open_button.setToolTip("start or resume the project in the output folder, with the Segment tab's "
                                    "classes, parameters and model (an existing project keeps its own)")
        self.open_button.clicked.connect(lambda: self.open_project())
        self.memory_check = QCheckBox("Learn from corrections", checked=True,
                                      toolTip="corrected images teach the next drafts (docs/algorithm.md §4.7)")
        self.memory_check.toggled.connect(self._set_memory)
        self.ahead_spin = QSpinBox(minimum=0, maximum=8, value=1, prefix="draft ahead: ")
        layout.addLayout(_row(self.open_button, self.memory_check, self.ahead_spin))
        self.image_list = QListWidget()
        self.image_list.itemActivated.connect(lambda item: self.go(self.image_list.row(item)))
        layout.addWidget(self.image_list, 1)
        self.previous_button, self.next_button = QPushButton("◀ Previous"), QPushButton("Next ▶")
        self.done_button = QPushButton("Mark done")
        self.done_button.setToolTip("save this image's labels as finished (exports take the done images)")
        self.previous_button.clicked.connect(lambda: self.step(-1))
        self.next_button.clicked.connect(lambda: self.step(1))
        self.done_button.clicked.connect(self.mark_done)
        layout.addLayout(_row(self.previous_button, self.done_button, self.next_button))
        self.format_combo = QComboBox()
        self.format_combo.addItems(["coco", "isprs", "folders"])
        export = QPushButton("Export done images")
        export.clicked.connect(self.export)
        layout.addLayout(_row(self.format_combo, export))
        self.status = QLabel("open a project: choose the images and an output folder", wordWrap=True)
        layout.addWidget(self.status)
        viewer.bind_key("PageDown", lambda _viewer: self.step(1), overwrite=True)
        viewer.bind_key("PageUp", lambda _viewer: self.step(-1), overwrite=True)
        self._update_buttons()

    def _path_row(self, edit: QLineEdit, folder: bool = False, file: bool = False) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(edit, 1)
        if folder:
            button = QPushButton("Folder…")
            button.clicked.connect(lambda: edit.setText(QFileDialog.getExistingDirectory(self) or edit.text()))
            row.addWidget(button)
        if file:
            button = QPushButton("File…")
            button.clicked.connect(lambda: edit.setText(QFileDialog.getOpenFileName(self)[0] or edit.text()))
            row.addWidget(button)
        return row

    # ------------------------------------------------------------------ the project

    def open_project(self, new: bool = False) -> bool:
        """Start (or resume) the project in the output folder; ``False`` after one message."""
        from ..dataset import Project, ProjectMismatchError

        output, images = self.output_edit.text().strip(), self.images_edit.text().strip()
        if not output:
            report(BadInputError("choose an output folder for the project"))
            return False
        self.close_project()
        try:
            if images:
                model, device, precision = self.segment.model_box.choice()
                self.project = Project.create(output, images, self.segment.classes(), params=self.segment.params(),
                                              model=model, device=device,
                                              dtype=None if precision == "auto" else precision,
                                              memory=self.memory_check.isChecked(), new=new)
            else:
                self.project = Project.open(output)
        except ProjectMismatchError as e:
            ask = QMessageBox.question(self, "Project", f"{e}\n\nStart a new project there?")
            return ask == QMessageBox.Yes and self.open_project(new=True)
        except BadInputError as e:
            report(e)
            return False
        self.segment.set_classes(list(self.project.classes))
        self.memory_check.setChecked(self.project.memory_enabled)
        self.refresh_list()
        following = self.project.next_todo()
        self.go(following if following is not None else 0)
        return True

    def close_project(self) -> None:
        """Give the project's lock back (the dock closing, another project opened)."""
        if self.project is not None:
            self.project.close()
        self.project, self.index, self.shown, self.drafts = None, None, None, {}

    def _set_memory(self, on: bool) -> None:
        if self.project is not None:
            self.project.memory_enabled = on

    def refresh_list(self) -> None:
        project = self.project
        self.image_list.clear()
        for entry in project.images if project is not None else ():
            reason = f" ({entry.reason})" if entry.reason else ""
            self.image_list.addItem(f"{entry.name} — {entry.status.value}{reason}")
        if self.index is not None:
            self.image_list.setCurrentRow(self.index)
        if project is not None:
            counts = ", ".join(f"{n} {status}" for status, n in project.counts().items() if n)
            self.status.setText(f"{Path(project.folder).name}: {len(project)} images ({counts})")
        self._update_buttons()

    def _update_buttons(self) -> None:
        ready = self.project is not None and self.index is not None
        for button in (self.previous_button, self.next_button, self.done_button):
            button.setEnabled(ready)

    # ------------------------------------------------------------------ moving between images

    def step(self, delta: int) -> None:
        """Save the image in front, then show the one ``delta`` places on."""
        if self.project is None or self.index is None:
            return
        if self.save():
            self.go((self.index + delta) % len(self.project))

    def mark_done(self) -> None:
        """Save the image in front as done, then show the next one to do."""
        if self.project is not None and self.index is not None and self.save("done"):
            following = self.project.next_todo(self.index)
            self.go(following if following is not None else self.index)

    def save(self, status: str = "corrected") -> bool:
        """Save the annotation's labels of the image in front into the project (on a worker);
        an image not touched keeps its status. ``False`` (one message) if it cannot be saved."""
        annotation, index = self.annotation, self.index
        session = annotation.session() if annotation is not None else None
        if session is None or index is None or not annotation.idle:
            return session is None
        if status != "done" and not session.history:
            return True
        labels, classes, edited = session.labels.copy(), list(session.classes), np.asarray(session.edited)
        save = partial(self.project.save_labels, index, labels, classes, edited=edited, state=session.state,
                       status=status)
        start(make_worker(save, returned=lambda _path: self.refresh_list(), errored=report), self.state.synchronous)
        return True

    def go(self, index: int) -> None:
        """Show image ``index``: its draft at once when it is ready, else as soon as it is made."""
        if self.project is None or not 0 <= index < len(self.project):
            return
        self.index = index
        self.image_list.setCurrentRow(index)
        ready = self.drafts.pop(index, None)
        if ready is not None:
            self._show(ready)
        else:
            self.status.setText(f"drafting {self.project.entry(index).name} …")
            self._draft(index)
        self._update_buttons()

    def _draft(self, index: int) -> None:
        """Draft image ``index`` on a worker (once at a time per image)."""
        from ..dataset import draft
        from ..engine import drain

        if index in self._drafting or self.project is None:
            return
        model = self.state.model if self.state.model_key and self.state.model_key[0] == self.project.model else None
        work = partial(drain, draft(self.project, index, model))
        self._drafting[index] = make_worker(work, returned=partial(self._drafted, index),
                                            errored=partial(self._not_drafted, index),
                                            finished=partial(self._drafting.pop, index, None))
        start(self._drafting[index], self.state.synchronous)

    def _drafted(self, index: int, ready) -> None:
        if index == self.index and self.shown != index:
            self._show(ready)
        elif index != self.index:
            self.drafts[index] = ready
        self.refresh_list()

    def _not_drafted(self, index: int, exc: BaseException) -> None:
        report(exc)
        self.refresh_list()

    def _show(self, ready) -> None:
        """The draft in the dataset's image layer and class layers (nothing piles up), then the
        next images drafted ahead."""
        layer = self._image_layer(ready, self.project.entry(ready.index).name)
        annotation = self.annotation
        if annotation is None or annotation.id not in self.state.annotations:
            annotation = self.annotation = self.state.add(Annotation(self.viewer, describe_image(layer)))
        annotation.image, annotation.image_ref = describe_image(layer), weakref.ref(layer)
        session = ready.session()
        session.class_ids = tuple(known or fresh for known, fresh in  # the same layers show them
                                  zip(annotation.ids_by_name(session.classes), session.class_ids))
        for bound in annotation.ordered_layers():
            if bound.data.shape != session.labels.shape:
                bound.data = np.zeros(session.labels.shape, np.uint8)
            bound.scale, bound.translate = annotation.image.scale, annotation.image.translate
        annotation.sessions = {(): session}
        annotation.source = {"kind": "labels", "path": str(self.project.labels_path(ready.index))}
        annotation.match_layers()
        annotation.show()
        self.shown = ready.index
        name = self.project.entry(ready.index).name
        self.status.setText(f"{name}: {ready.source}" + ("" if ready.state is not None else
                                                         " (no features: Refine needs a model run)"))
        if self.state.on_change is not None:
            self.state.on_change(annotation, "classes")
        ahead = self.project.following(ready.index, self.ahead_spin.value())
        for following in ahead:
            if following not in self.drafts:
                self._draft(following)
        self.drafts = {i: d for i, d in self.drafts.items() if i in ahead}

    def _image_layer(self, ready, name: str):
        """The dataset's one image layer, named after the image and holding its pixels (replaced
        when their kind changes, gray to RGB say)."""
        data, kwargs, _ = image_layer_data(ready.image, ready.geo, name)[-1]
        kwargs.update(name=name, visible=True)
        old = self.annotation.image_layer if self.annotation is not None else None
        old = old if old is not None and old in self.viewer.layers else None
        if old is not None and old.rgb == kwargs.get("rgb", False) and old.data.ndim == data.ndim:
            old.data, old.metadata, old.name = data, kwargs["metadata"], name
            if "contrast_limits" in kwargs:
                old.contrast_limits = kwargs["contrast_limits"]
            return old
        if old is not None:
            self.viewer.layers.remove(old)
        layer = self.viewer.add_image(data, **kwargs)
        self.viewer.layers.move(self.viewer.layers.index(layer), 0)
        return layer

    def export(self) -> list[Path]:
        """Write the done images in the chosen format into ``export/`` of the output folder."""
        from ..dataset import export_project

        if self.project is None:
            report(BadInputError("open a project first"))
            return []
        try:
            written = export_project(self.project, format=self.format_combo.currentText(), overwrite=True)
        except BadInputError as e:
            report(e)
            return []
        self.status.setText(f"exported {self.project.counts().get('done', 0)} done images to "
                            f"{Path(written[0]).parent if written else self.project.folder}")
        return written

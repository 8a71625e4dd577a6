"""The MaskDiffusion dock widget: pick an image, a model and classes; run in the background.

Thin by design: the engine segments (:mod:`maskdiffusion.engine`), :mod:`.layers` turns the
result into layers. The run is a napari ``thread_worker`` generator that yields per tile
(progress, Cancel at the next tile) and never touches Qt; layers change only when it
returns, so a cancelled or failed run leaves the viewer as it was. torch loads on first use.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING

import napari
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.classes import (
    PRESETS,
    ClassListError,
    ClassSpec,
    as_class_specs,
    default_color,
    read_class_file,
    write_class_file,
)
from ..core.params import SegmentParams
from . import layers as L
from .settings import load_settings, save_settings

if TYPE_CHECKING:
    from napari.qt.threading import FunctionWorker, GeneratorWorker

__all__ = ["MaskDiffusionWidget"]

PRESET_TITLES = {
    "potsdam6": "ISPRS Potsdam (6 classes)",
    "potsdam3": "Potsdam-3 (3 classes)",
    "cityscapes": "Cityscapes (19 classes)",
    "cocostuff27": "COCO-Stuff-27",
}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
CURRENT_PLANE, ALL_PLANES = "current plane", "all planes"
_NAME, _PROMPT, _COLOR = range(3)


# --------------------------------------------------------------------------- worker side (no Qt)


@contextmanager
def _spare_one_core(device):
    """On the CPU, run torch on all cores but one: the interface keeps a core and stays responsive.

    Oversubscribed cores (torch's threads spinning on every core) froze napari for 100-500 ms at a
    time in ``benchmarks/bench_ui_responsiveness.py``; one core fewer costs little compute.
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.device(device).type != "cpu" or cores < 2:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _load(source: str, device: str, precision: str):
    from ..model.loading import load_model, resolve_device

    with _spare_one_core(resolve_device(device)):
        return load_model(source, device, None if precision == "auto" else precision)


def _warm_up_labels() -> None:
    """Build a throwaway Labels model here, so its first-use imports (pandas, scikit-image) do
    not freeze the interface when the class layers are added on the main thread."""
    import numpy as np
    from napari.layers import Labels

    Labels(np.zeros((1, 1), np.uint8))


def _segment_planes(read_plane, planes, classes, model, params):
    """Segment each plane; yield ``(plane number, planes, Progress)``, return {plane: result}."""
    from ..engine import iter_segment

    _warm_up_labels()
    results = {}
    with _spare_one_core(model.device):
        for i, plane in enumerate(planes):
            steps = iter_segment(read_plane(plane), classes, model, params, keep_features=True)
            while True:
                try:
                    step = next(steps)
                except StopIteration as stop:
                    results[plane] = stop.value
                    break
                yield i, len(planes), step
    return results


def _delegate(gen):
    """Run ``gen`` in the worker while the widget keeps a handle to close it after a cancel."""
    return (yield from gen)


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return True
    from ..model.loading import ModelNotFoundError

    return isinstance(exc, ModelNotFoundError)


def _report(exc: BaseException, what: str) -> None:
    """One clear notification for bad input, the traceback for anything unexpected."""
    if _is_user_error(exc):
        show_error(f"{what}: {exc}")
    else:
        from napari.utils.notifications import notification_manager

        notification_manager.receive_error(type(exc), exc, exc.__traceback__)


# --------------------------------------------------------------------------- the widget


def _close_run(gen, pbar) -> None:
    """Close the run's generator (the engine cleans up between tiles) and its progress bar."""
    if gen is not None:
        gen.close()
    if pbar is not None:
        pbar.close()


def _disconnect(connections, stop, *_) -> None:
    stop()
    for event, callback in connections:
        event.disconnect(callback)


def _set_row_visible(form: QFormLayout, field: QWidget, visible: bool) -> None:
    field.setVisible(visible)
    label = form.labelForField(field)
    if label is not None:
        label.setVisible(visible)


class ClassTable(QTableWidget):
    """Class name, prompt text (``a | b`` averages prompts) and colour (double-click to change)."""

    def __init__(self, parent=None):
        super().__init__(0, 3, parent)
        self.setHorizontalHeaderLabels(["Name", "Prompt", "Colour"])
        header = self.horizontalHeader()
        header.setSectionResizeMode(_NAME, QHeaderView.Stretch)
        header.setSectionResizeMode(_PROMPT, QHeaderView.Stretch)
        header.setSectionResizeMode(_COLOR, QHeaderView.ResizeToContents)
        self.verticalHeader().setVisible(False)
        self.setSelectionBehavior(QAbstractItemView.SelectRows)
        self.setSelectionMode(QAbstractItemView.SingleSelection)
        self.cellDoubleClicked.connect(self._pick_color)

    def set_classes(self, classes) -> None:
        self.setRowCount(0)
        for spec in as_class_specs(classes) if classes else []:
            self._append_row(spec.name, "" if spec.prompts == (spec.name,) else spec.prompt, spec.color)

    def _append_row(self, name: str, prompt: str, color) -> None:
        row = self.rowCount()
        self.insertRow(row)
        self.setItem(row, _NAME, QTableWidgetItem(name))
        self.setItem(row, _PROMPT, QTableWidgetItem(prompt))
        item = QTableWidgetItem()
        item.setFlags(item.flags() & ~Qt.ItemIsEditable)
        self.setItem(row, _COLOR, item)
        self.set_color(row, color or default_color(row))

    def set_color(self, row: int, color) -> None:
        item = self.item(row, _COLOR)
        item.setData(Qt.UserRole, tuple(int(c) for c in color))
        item.setBackground(QColor(*color))
        item.setText("#{:02x}{:02x}{:02x}".format(*color))

    def _pick_color(self, row: int, column: int) -> None:
        if column != _COLOR:
            return
        chosen = QColorDialog.getColor(QColor(*self.item(row, _COLOR).data(Qt.UserRole)), self, "Class colour")
        if chosen.isValid():
            self.set_color(row, (chosen.red(), chosen.green(), chosen.blue()))

    def add_class(self, name: str = "", prompt: str = "") -> None:
        row = self.rowCount()
        self._append_row(name or f"class {row + 1}", prompt, None)
        self.setCurrentCell(row, _NAME)

    def remove_selected(self) -> None:
        if self.currentRow() >= 0:
            self.removeRow(self.currentRow())

    def move_selected(self, delta: int) -> None:
        row, target = self.currentRow(), self.currentRow() + delta
        if row < 0 or not 0 <= target < self.rowCount():
            return
        rows = self.rows()
        rows[row], rows[target] = rows[target], rows[row]
        self.setRowCount(0)
        for name, prompt, color in rows:
            self._append_row(name, prompt, color)
        self.setCurrentCell(target, _NAME)

    def rows(self) -> list[tuple[str, str, tuple[int, int, int]]]:
        """The table's raw rows: (name, prompt text, colour)."""
        return [
            (self.item(r, _NAME).text() if self.item(r, _NAME) else "",
             self.item(r, _PROMPT).text() if self.item(r, _PROMPT) else "",
             self.item(r, _COLOR).data(Qt.UserRole))
            for r in range(self.rowCount())
        ]

    def classes(self) -> list[ClassSpec]:
        """The table as validated classes; raises ``ClassListError`` with the reason."""
        specs = [ClassSpec(name, tuple(p for p in prompt.split("|") if p.strip()), color)
                 for name, prompt, color in self.rows()]
        return as_class_specs(specs) if specs else []


class MaskDiffusionWidget(QWidget):
    """Zero-shot segmentation from class names into one editable Labels layer per class."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.settings = load_settings()
        self._model = None
        self._model_key: tuple[str, str, str] | None = None
        self._loader: FunctionWorker | None = None
        self._worker: GeneratorWorker | None = None
        self._run_gen = None
        self._pbar: progress | None = None
        self._run_state: dict = {}
        self._apply: dict | None = None
        self._worker_slots: list = []
        self._bands_key = None

        layout = QVBoxLayout(self)
        layout.addWidget(self._image_box())
        layout.addWidget(self._model_box())
        layout.addWidget(self._class_box())
        layout.addWidget(self._params_box())
        layout.addLayout(self._run_row())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addLayout(self._layers_row())
        layout.addStretch(1)

        self.class_table.set_classes(PRESETS["potsdam6"])
        connections = [
            (viewer.layers.events.inserted, self.reset_choices),
            (viewer.layers.events.removed, self.reset_choices),
            (viewer.layers.events.reordered, self.reset_choices),
            (viewer.layers.selection.events.active, self._on_active_layer),
            (viewer.dims.events.current_step, self._update_plane_hint),
        ]
        for event, callback in connections:
            event.connect(callback)
        self.destroyed.connect(partial(_disconnect, connections, self._stop))
        self.reset_choices()
        self._update_buttons()

    def _stop(self) -> None:
        """Quit a run whose widget is gone: its result is dropped, its progress bar closed."""
        worker = self._worker
        if worker is not None:
            for signal, slot in self._worker_slots:
                signal.disconnect(slot)
            worker.finished.connect(partial(_close_run, self._run_gen, self._pbar))
            worker.quit()
        self._worker = self._apply = None

    # ------------------------------------------------------------------ sections

    def _image_box(self) -> QGroupBox:
        box = QGroupBox("Image")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Layer", self.image_combo)
        self.band_combos = [QComboBox() for _ in range(3)]
        self._bands_row = QWidget()
        row = QHBoxLayout(self._bands_row)
        row.setContentsMargins(0, 0, 0, 0)
        for label, combo in zip("RGB", self.band_combos):
            row.addWidget(QLabel(label))
            row.addWidget(combo, 1)
        form.addRow("Bands", self._bands_row)
        self.planes_combo = QComboBox()
        self.planes_combo.addItems([CURRENT_PLANE, ALL_PLANES])
        form.addRow("Planes", self.planes_combo)
        self._form_image = form
        return box

    def _model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.source_combo = QComboBox()
        self.source_combo.setEditable(True)
        self.source_combo.setInsertPolicy(QComboBox.NoInsert)
        self.source_combo.addItems(self.settings.recent_sources or [self.settings.model_source])
        self.source_combo.setCurrentText(self.settings.model_source)
        self.source_combo.setToolTip("Hugging Face hub id, a diffusers folder, or a .safetensors/.ckpt file")
        self.source_combo.currentTextChanged.connect(self._on_model_choice_changed)
        folder_btn = QPushButton("Folder…")
        folder_btn.clicked.connect(self._browse_folder)
        file_btn = QPushButton("File…")
        file_btn.clicked.connect(self._browse_file)
        row = QHBoxLayout()
        row.addWidget(self.source_combo, 1)
        row.addWidget(folder_btn)
        row.addWidget(file_btn)
        form.addRow("Source", row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(self.settings.device if self.settings.device in DEVICES else "auto")
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(PRECISIONS)
        precision = self.settings.precision
        self.precision_combo.setCurrentText(precision if precision in PRECISIONS else "auto")
        for combo in (self.device_combo, self.precision_combo):
            combo.currentTextChanged.connect(self._on_model_choice_changed)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load_model)
        self.model_status = QLabel("not loaded")
        self.model_status.setWordWrap(True)
        form.addRow(self.load_button, self.model_status)
        return box

    def _class_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        col = QVBoxLayout(box)
        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Preset…")
        self.preset_combo.addItems(list(PRESET_TITLES.values()))
        self.preset_combo.activated.connect(self._on_preset)
        col.addWidget(self.preset_combo)
        self.class_table = ClassTable()
        self.class_table.setMinimumHeight(160)
        col.addWidget(self.class_table)
        row = QHBoxLayout()
        for text, slot, tip in (
            ("+", lambda: self.class_table.add_class(), "Add a class"),
            ("−", self.class_table.remove_selected, "Remove the selected class"),
            ("↑", lambda: self.class_table.move_selected(-1), "Move up"),
            ("↓", lambda: self.class_table.move_selected(1), "Move down"),
            ("Load…", self._load_classes_dialog, "Load a class list (.json or text)"),
            ("Save…", self._save_classes_dialog, "Save the class list as .json"),
        ):
            btn = QPushButton(text)
            btn.setToolTip(tip)
            btn.clicked.connect(slot)
            row.addWidget(btn)
        col.addLayout(row)
        return box

    def _params_box(self) -> QGroupBox:
        defaults = SegmentParams()
        box = QGroupBox("Parameters")
        form = QFormLayout(box)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(defaults.tile_size)
        self.tile_spin.setSuffix(" px")
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 2048)
        self.overlap_spin.setSingleStep(16)
        self.overlap_spin.setValue(defaults.overlap)
        self.overlap_spin.setSuffix(" px")
        self.scale_spin = QDoubleSpinBox()
        self.scale_spin.setRange(0.05, 8.0)
        self.scale_spin.setSingleStep(0.25)
        self.scale_spin.setValue(defaults.scale)
        self.scale_spin.setToolTip("Resample the image by this factor first (0.5: 5 cm Potsdam as 10 cm)")
        self.prototypes_combo = QComboBox()
        self.prototypes_combo.addItems(["tile", "image"])
        self.prototypes_combo.setCurrentText(defaults.prototypes)
        self.prototypes_combo.setToolTip("Class prototypes per tile (the paper) or shared over the whole image")
        self.unsupervised_spin = QSpinBox()
        self.unsupervised_spin.setRange(0, 256)
        self.unsupervised_spin.setSpecialValueText("off")
        self.unsupervised_spin.setValue(defaults.unsupervised or 0)
        self.unsupervised_spin.setToolTip(
            "Unsupervised: K clusters of the features, named after the classes when given"
        )
        self.semantic_check = QCheckBox("semantic map layer")
        self.confidence_check = QCheckBox("confidence layer")
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Overlap", self.overlap_spin)
        form.addRow("Scale", self.scale_spin)
        form.addRow("Prototypes", self.prototypes_combo)
        form.addRow("Unsupervised K", self.unsupervised_spin)
        form.addRow("Also add", self.semantic_check)
        form.addRow("", self.confidence_check)
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

    def _layers_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        merge = QPushButton("Merge classes → map")
        merge.setToolTip(L.MERGE_RULE.capitalize())
        merge.clicked.connect(self.merge_layers)
        split = QPushButton("Split map → classes")
        split.setToolTip("Split the selected semantic map into one Labels layer per class")
        split.clicked.connect(self.split_layer)
        row.addWidget(merge)
        row.addWidget(split)
        return row

    # ------------------------------------------------------------------ image choice

    def reset_choices(self, event=None) -> None:
        """Refill the image list from the viewer (napari calls this on layer changes too)."""
        current = self.image_combo.currentText()
        names = [ly.name for ly in self.viewer.layers
                 if isinstance(ly, Image) and ly.metadata.get("kind") != L.CONFIDENCE]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        active = self.viewer.layers.selection.active
        if current in names:
            self.image_combo.setCurrentText(current)
        elif isinstance(active, Image):
            self.image_combo.setCurrentText(active.name)
        elif names:
            self.image_combo.setCurrentIndex(len(names) - 1)
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _on_active_layer(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image) and not self.running:
            self.image_combo.setCurrentText(active.name)

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None

    def _on_image_changed(self, *_) -> None:
        layer = self.image_layer()
        info = L.describe_image(layer) if layer is not None else None
        bands = info is not None and info.n_bands > 1
        _set_row_visible(self._form_image, self._bands_row, bands)
        _set_row_visible(self._form_image, self.planes_combo, info is not None and info.n_planes > 1)
        key = (info.name, info.band_names) if bands else None
        if bands and key != self._bands_key:
            for combo, band in zip(self.band_combos, info.default_bands()):
                combo.clear()
                combo.addItems(list(info.band_names))
                combo.setCurrentIndex(band)
        self._bands_key = key
        self._update_plane_hint()
        self._update_buttons()

    def _update_plane_hint(self, event=None) -> None:
        layer = self.image_layer()
        if layer is None:
            self.planes_combo.setToolTip("")
            return
        info = L.describe_image(layer)
        if info.n_planes > 1:
            plane = L.current_plane(layer, info, self.viewer.dims.point)
            self.planes_combo.setToolTip(f"current plane {plane} of {info.n_planes}")

    def bands(self) -> tuple[int, ...] | None:
        layer = self.image_layer()
        if layer is None or L.describe_image(layer).n_bands <= 1:
            return None
        return tuple(combo.currentIndex() for combo in self.band_combos)

    # ------------------------------------------------------------------ model

    def model_choice(self) -> tuple[str, str, str]:
        return (self.source_combo.currentText().strip(), self.device_combo.currentText(),
                self.precision_combo.currentText())

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Diffusers model folder")
        if folder:
            self.source_combo.setCurrentText(folder)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Stable Diffusion checkpoint", "",
                                              "Checkpoints (*.safetensors *.ckpt *.pt *.pth *.bin)")
        if path:
            self.source_combo.setCurrentText(path)

    @property
    def model_ready(self) -> bool:
        return self._model is not None and self._model_key == self.model_choice()

    @property
    def loading(self) -> bool:
        return self._loader is not None

    @property
    def running(self) -> bool:
        """A run is segmenting, or its layers are still being added."""
        return self._worker is not None or self._apply is not None

    def _on_model_choice_changed(self, *_) -> None:
        if not self.loading:
            self.model_status.setText("ready" if self.model_ready else "not loaded: press Load model")
        self._update_buttons()

    def load_model(self) -> FunctionWorker | None:
        """Load the chosen model in the background; Run is enabled once it is ready."""
        key = self.model_choice()
        if not key[0]:
            show_error("MaskDiffusion: give a model source (hub id, folder or file)")
            return None
        self.model_status.setText(f"loading {key[0]} …")
        self._loader = worker = create_worker(_load, *key, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(partial(self._on_model_loaded, key))
        worker.errored.connect(self._on_model_error)
        worker.finished.connect(self._on_loader_finished)
        self._update_buttons()
        worker.start()
        return worker

    def _on_model_loaded(self, key, model) -> None:
        self._model, self._model_key = model, key
        self.settings.remember_source(key[0])
        self.settings.device, self.settings.precision = key[1], key[2]
        save_settings(self.settings)
        if self.source_combo.findText(key[0]) < 0:
            self.source_combo.insertItem(0, key[0])
        self.model_status.setText(f"ready: {model.device}, {str(model.dtype).replace('torch.', '')}")

    def _on_model_error(self, exc: BaseException) -> None:
        self._model = None
        self.model_status.setText("failed to load (see the notification)")
        _report(exc, "MaskDiffusion could not load the model")

    def _on_loader_finished(self) -> None:
        self._loader = None
        if not self.model_ready and self._model is not None:
            self.model_status.setText("not loaded: press Load model")
        self._update_buttons()

    # ------------------------------------------------------------------ classes

    def set_classes(self, classes) -> None:
        self.class_table.set_classes(classes)

    def classes(self) -> list[ClassSpec]:
        return self.class_table.classes()

    def _on_preset(self, index: int) -> None:
        if index > 0:
            self.set_classes(PRESETS[list(PRESET_TITLES)[index - 1]])
            self.preset_combo.setCurrentIndex(0)

    def load_class_file(self, path) -> None:
        try:
            self.set_classes(read_class_file(path))
        except ClassListError as e:
            show_error(str(e))

    def save_class_file(self, path) -> None:
        try:
            write_class_file(path, self.classes())
        except (ClassListError, OSError) as e:
            show_error(f"cannot save the class list: {e}")

    def _load_classes_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load class list", "", "Class lists (*.json *.txt);;All files (*)")
        if path:
            self.load_class_file(path)

    def _save_classes_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save class list", "classes.json", "JSON (*.json)")
        if path:
            self.save_class_file(path)

    # ------------------------------------------------------------------ run

    def params(self) -> SegmentParams:
        return SegmentParams(
            tile_size=self.tile_spin.value(),
            overlap=self.overlap_spin.value(),
            scale=round(self.scale_spin.value(), 4),
            prototypes=self.prototypes_combo.currentText(),
            unsupervised=self.unsupervised_spin.value() or None,
            bands=self.bands(),
        )

    def _update_buttons(self) -> None:
        self.run_button.setEnabled(self.model_ready and not self.running and not self.loading
                                   and self.image_layer() is not None)
        self.cancel_button.setEnabled(self._worker is not None)
        self.load_button.setEnabled(not self.loading and not self.running)
        if self.loading:
            self.run_button.setToolTip("the model is loading")
        elif not self.model_ready:
            self.run_button.setToolTip("load the model first")
        else:
            self.run_button.setToolTip("")

    def run(self) -> GeneratorWorker | None:
        """Start segmenting the chosen image; returns the worker (``None`` if the input is bad)."""
        layer = self.image_layer()
        if layer is None or not self.model_ready or self.running:
            return None
        try:
            params = self.params()
            classes = self.classes()
            if not classes and not params.unsupervised:
                raise ClassListError("no classes: add at least one class, or set Unsupervised K")
            image = L.describe_image(layer)
        except ValueError as e:
            show_error(f"MaskDiffusion: {e}")
            return None
        if image.n_planes > 1 and self.planes_combo.currentText() == CURRENT_PLANE:
            planes = image.planes(L.current_plane(layer, image, self.viewer.dims.point))
        else:
            planes = image.planes()
        self._run_state = {"image": image, "planes": planes, "semantic": self.semantic_check.isChecked(),
                           "confidence": self.confidence_check.isChecked()}
        self._run_gen = _segment_planes(partial(L.read_plane, layer, image), planes, classes, self._model, params)
        self._worker = worker = create_worker(_delegate, self._run_gen, _start_thread=False, _ignore_errors=True)
        self._pbar = progress(total=0, desc="MaskDiffusion")
        self._worker_slots = [
            (worker.yielded, self._on_progress),
            (worker.returned, self._on_returned),
            (worker.errored, self._on_run_error),
            (worker.aborted, self._on_aborted),
            (worker.finished, self._on_run_finished),
        ]
        for signal, slot in self._worker_slots:
            signal.connect(slot)
        self.status.setText(f"segmenting {layer.name!r} …")
        self._update_buttons()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the run at the next tile; the viewer stays as it was."""
        if self._worker is not None:
            self.status.setText("cancelling at the next tile …")
            self._worker.quit()

    def _on_progress(self, item) -> None:
        plane, n_planes, step = item
        pbar = self._pbar
        if pbar is None or self._worker is None or self._worker.abort_requested or step.total <= 0:
            return
        where = f"plane {plane + 1}/{n_planes}, " if n_planes > 1 else ""
        self.status.setText(f"{where}{step.stage}: {step.message or f'{step.done}/{step.total}'}")
        # the progress bar may process events, and so this run's end, before it returns
        pbar.total = n_planes * step.total
        pbar.n = plane * step.total + step.done
        pbar.set_description(f"MaskDiffusion {step.stage}")
        pbar.refresh()

    def _on_returned(self, results) -> None:
        state = self._run_state
        try:
            data = L.result_layer_data(state["image"], results, semantic=state["semantic"],
                                       confidence=state["confidence"])
        except ValueError as e:
            show_error(f"MaskDiffusion: {e}")
            return
        from .refine_session import remember_results

        layer = self.image_layer()
        remember_results(state["image"], results, source=layer.metadata.get("source") if layer else None)
        self._apply = {"queue": list(data), "planes": state["planes"], "added": [], "updated": [], "edited": [],
                       "classes": len(next(iter(results.values())).classes)}
        QTimer.singleShot(0, self._apply_next)

    def _apply_next(self) -> None:
        """Add or update one layer per event-loop turn, so the interface never freezes for all."""
        job = self._apply
        if not job:
            return
        added, updated, edited = L.apply_layer_data(self.viewer, [job["queue"].pop(0)], job["planes"])
        job["added"] += added
        job["updated"] += updated
        job["edited"] += edited
        if job["queue"]:
            QTimer.singleShot(0, self._apply_next)
            return
        self._apply = None
        self.status.setText(f"done: {job['classes']} classes, {len(job['added'])} new layers, "
                            f"{len(job['updated'])} updated")
        if job["edited"]:
            names = ", ".join(repr(ly.name) for ly in job["edited"])
            show_warning(
                f"MaskDiffusion replaced hand edits in {names}; select a layer and press Ctrl-Z to get them back"
            )
        elif job["updated"]:
            show_info(f"MaskDiffusion updated {len(job['updated'])} layers; Ctrl-Z on a layer undoes this run there")
        self._update_buttons()

    def _on_run_error(self, exc: BaseException) -> None:
        self.status.setText("failed (see the notification)")
        _report(exc, "MaskDiffusion")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled: no layer was changed")

    def _on_run_finished(self) -> None:
        _close_run(self._run_gen, self._pbar)
        self._worker = self._run_gen = self._pbar = None
        self._run_state = {}
        self._update_buttons()

    # ------------------------------------------------------------------ merge / split

    def merge_layers(self) -> None:
        image = self.image_layer()
        has_classes = image is not None and L.class_layers(self.viewer, image.name)
        try:
            L.merge_class_layers(self.viewer, image.name if has_classes else None)
        except ValueError as e:
            show_error(f"MaskDiffusion: {e}")

    def split_layer(self) -> None:
        try:
            L.split_semantic_layer(self.viewer)
        except ValueError as e:
            show_error(f"MaskDiffusion: {e}")

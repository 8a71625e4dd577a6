"""The dock's model choice: source, device and precision, loaded in the background.

The state keeps one model: loading another frees the previous one. The status line says which
model is loaded, on which device and in which precision (``auto`` resolves to bf16 on a CPU
with native bf16, fp16 on a GPU, else fp32).
"""

from __future__ import annotations

from functools import partial

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton

from .annotation import AnnotatorState
from .notify import report
from .settings import WidgetSettings, save_settings
from .workers import make_worker, start

__all__ = ["DEVICES", "PRECISIONS", "ModelBox"]

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class ModelBox(QGroupBox):
    """Model source (hub id, folder, checkpoint file or ``random:tiny``), device, precision."""

    changed = Signal()

    def __init__(self, state: AnnotatorState, settings: WidgetSettings, parent=None):
        super().__init__("Model", parent)
        self.state, self.settings = state, settings
        self._loader = None
        self._failed = False
        form = QFormLayout(self)
        self.source_combo = QComboBox()
        self.source_combo.setEditable(True)
        self.source_combo.setInsertPolicy(QComboBox.NoInsert)
        self.source_combo.addItems(settings.recent_sources or [settings.model_source])
        self.source_combo.setCurrentText(settings.model_source)
        self.source_combo.setToolTip("Hugging Face hub id, a diffusers folder, a .safetensors/.ckpt file, or "
                                     "random:tiny (random weights, to try the plumbing)")
        folder_button, file_button = QPushButton("Folder…"), QPushButton("File…")
        folder_button.clicked.connect(self._browse_folder)
        file_button.clicked.connect(self._browse_file)
        row = QHBoxLayout()
        row.addWidget(self.source_combo, 1)
        row.addWidget(folder_button)
        row.addWidget(file_button)
        form.addRow("Source", row)
        self.device_combo, self.precision_combo = QComboBox(), QComboBox()
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(settings.device if settings.device in DEVICES else "auto")
        self.precision_combo.addItems(PRECISIONS)
        self.precision_combo.setCurrentText(settings.precision if settings.precision in PRECISIONS else "auto")
        self.precision_combo.setToolTip("auto: bf16 on a CPU with native bf16, fp16 on a GPU, else fp32")
        row = QHBoxLayout()
        row.addWidget(self.device_combo, 1)
        row.addWidget(QLabel("Precision"))
        row.addWidget(self.precision_combo, 1)
        form.addRow("Device", row)
        self.load_button = QPushButton("Load model")
        self.load_button.clicked.connect(self.load)
        self.status = QLabel("not loaded")
        self.status.setWordWrap(True)
        form.addRow(self.load_button, self.status)
        for combo in (self.source_combo, self.device_combo, self.precision_combo):
            combo.currentTextChanged.connect(self._on_choice_changed)

    def choice(self) -> tuple[str, str, str]:
        """The source as typed (without surrounding blanks or a trailing path separator), device, precision."""
        source = self.source_combo.currentText().strip()
        return source.rstrip("/\\") or source, self.device_combo.currentText(), self.precision_combo.currentText()

    @property
    def ready(self) -> bool:
        return self.state.model is not None and self.state.model_key == self.choice()

    @property
    def loading(self) -> bool:
        return self._loader is not None

    def _on_choice_changed(self, *_) -> None:
        if not self.loading:
            self.status.setText(self._describe() if self.ready else "not loaded: press Load model")
        self.changed.emit()

    def _describe(self) -> str:
        model = self.state.model
        return f"loaded: {model.source} on {model.device}, {getattr(model, 'precision', model.dtype)}"

    def load(self):
        """Load the chosen model in the background; returns the worker (``None`` if nothing to load)."""
        key = self.choice()
        if not key[0]:
            self.status.setText("give a model source: a hub id, a folder, a checkpoint file or random:tiny")
            return None
        from .workers import load

        self.status.setText(f"loading {key[0]} …")
        self._failed = False
        self._loader = worker = make_worker(load, *key, returned=partial(self._on_loaded, key),
                                            errored=self._on_error, finished=self._on_finished)
        self.changed.emit()
        return start(worker, self.state.synchronous)

    def _on_loaded(self, key, model) -> None:
        self.state.set_model(model, key)
        self.settings.remember_source(key[0])
        self.settings.device, self.settings.precision = key[1], key[2]
        save_settings(self.settings)
        if self.source_combo.findText(key[0]) < 0:
            self.source_combo.insertItem(0, key[0])
        self.status.setText(self._describe())

    def _on_error(self, exc: BaseException) -> None:
        self._failed = True
        self.status.setText("could not load the model (see the notification)")
        report(exc, "MaskDiffusion could not load the model")

    def _on_finished(self) -> None:
        self._loader = None
        if not self.ready and self.state.model is not None and not self._failed:
            self.status.setText("not loaded: press Load model")
        self.changed.emit()

    def _browse_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Diffusers model folder")
        if folder:
            self.source_combo.setCurrentText(folder)

    def _browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Stable Diffusion checkpoint", "",
                                              "Checkpoints (*.safetensors *.ckpt *.pt *.pth *.bin)")
        if path:
            self.source_combo.setCurrentText(path)

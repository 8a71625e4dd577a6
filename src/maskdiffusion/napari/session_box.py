"""The Refine tab's session files: save and open ``.mdsession`` bundles, autosave.

Autosave writes every N minutes (and when the application quits) when something changed, to
the bundle last saved or opened, else to ``sessions/`` in the plugin's config folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox

from ..errors import OutputError
from ..session_bundle import SUFFIX, save_session
from .layers import safe_filename
from .notify import report

if TYPE_CHECKING:
    import napari

    from .state import AnnotatorState, ImageRun

__all__ = ["AUTOSAVE_MINUTES", "SessionBox"]

AUTOSAVE_MINUTES = 2


class SessionBox(QGroupBox):
    """Save…, Open…, autosave minutes and where the session was last written."""

    def __init__(self, viewer: napari.viewer.Viewer, state: AnnotatorState,
                 current: Callable[[], tuple[ImageRun | None, tuple]], parent=None):
        super().__init__("Session", parent)
        self.viewer, self.state, self.current = viewer, state, current
        self.dirty = False
        form = QFormLayout(self)
        row = QHBoxLayout()
        save, open_ = QPushButton("Save…"), QPushButton("Open…")
        save.clicked.connect(self._save_dialog)
        open_.clicked.connect(self._open_dialog)
        row.addWidget(save)
        row.addWidget(open_)
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(0, 120)
        self.autosave_spin.setSuffix(" min")
        self.autosave_spin.setSpecialValueText("off")
        self.autosave_spin.setValue(AUTOSAVE_MINUTES)
        self.autosave_spin.valueChanged.connect(self._set_autosave)
        row.addWidget(QLabel("Autosave"))
        row.addWidget(self.autosave_spin)
        form.addRow(row)
        self.path_label = QLabel("not saved yet")
        self.path_label.setWordWrap(True)
        form.addRow(self.path_label)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.autosave)
        self._set_autosave(AUTOSAVE_MINUTES)
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is not None:
            QApplication.instance().aboutToQuit.connect(self.autosave)

    def _default_path(self, run: ImageRun) -> Path:
        from .settings import settings_path

        return settings_path().parent / "sessions" / (safe_filename(run.image.name) + SUFFIX)

    def save(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen run's current plane (with the annotator's latest strokes)."""
        run, plane = self.current()
        session = run.session(plane) if run is not None else None
        if session is None:
            return None
        run.sync_all(plane)
        path = Path(path) if path else (run.session_path or self._default_path(run))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            folder = save_session(path, session)
        except OSError as e:
            self.autosave_spin.setValue(0)
            report(OutputError(f"cannot save the session to {path}: {e.strerror or e} (autosave is off)"))
            return None
        run.session_path = folder
        self.dirty = False
        self.path_label.setText(f"saved to {folder}")
        return folder

    def autosave(self) -> Path | None:
        """Save if anything changed since the last save (prepared sessions only: the cache is
        never built on the interface's thread)."""
        run, plane = self.current()
        session = run.session(plane) if run is not None else None
        if session is None or not session.prepared or not (self.dirty or run.session_path is None):
            return None
        return self.save()

    def open(self, path: str | Path) -> list:
        """Open a bundle through the plugin's reader; the dock takes its layers in."""
        folder = Path(path)
        layers = self.viewer.open(str(folder), plugin="napari-maskdiffusion")
        self.path_label.setText(f"opened {folder.parent if folder.name == 'session.json' else folder}")
        return layers

    def _set_autosave(self, minutes: int) -> None:
        if minutes > 0:
            self.timer.start(int(minutes * 60_000))
        else:
            self.timer.stop()

    def _save_dialog(self) -> None:
        run, _ = self.current()
        start = str(run.session_path or "") if run is not None else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save session", start, f"Session (*{SUFFIX})")
        if path:
            self.save(path)

    def _open_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open session folder (.mdsession)")
        if path:
            self.open(path)

"""The Refine tab's session files: save and open ``.mdsession`` bundles, autosave.

Autosave writes every N minutes (and when the application quits) when something changed, to
the bundle last saved or opened, else to ``sessions/`` in the plugin's config folder. The dock's
saves never freeze the interface (:meth:`SessionBox.save_soon`): at 6000² reading every layer
back took about 0.8 s on the interface's thread, and the bundle was written there too, every two
minutes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox

from ..errors import OutputError
from ..session_bundle import SUFFIX, save_session
from .layers import safe_filename
from .notify import report
from .workers import make_worker, start

if TYPE_CHECKING:
    import napari

    from ..session import Session
    from .annotation import Annotation, AnnotatorState

__all__ = ["AUTOSAVE_MINUTES", "SessionBox"]

AUTOSAVE_MINUTES = 2


class SessionBox(QGroupBox):
    """Save…, Open…, autosave minutes and where the session was last written."""

    def __init__(self, viewer: napari.viewer.Viewer, state: AnnotatorState,
                 current: Callable[[], tuple[Annotation | None, tuple, Session | None]], parent=None):
        super().__init__("Session", parent)
        self.viewer, self.state, self.current = viewer, state, current
        self.dirty = False
        self._writing = None
        self._written_event = threading.Event()
        self._written_event.set()
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
            QApplication.instance().aboutToQuit.connect(self._save_before_quit)

    def _needs_saving(self) -> bool:
        """A prepared session changed since its last save, or never saved (the cache is never
        built on the interface's thread for a save nobody asked for)."""
        run, _, session = self.current()
        return session is not None and session.prepared and (self.dirty or run.session_path is None)

    def save(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen run's current plane (with the annotator's latest strokes) now, on this
        thread; the bundle's folder, or ``None``. For scripts and for quitting: the dock saves
        with :meth:`save_soon`."""
        run, plane, session = self.current()
        if session is None:
            return None
        if self._writing is not None:
            self._written_event.wait()
        for layer in run.ordered_layers():
            run.take_strokes(layer, plane)
        self.dirty = False
        try:
            folder = self._write(self._target(run, path), session, session.snapshot())
        except OutputError as e:
            self._write_failed(e)
            return None
        return self._written(run, folder)

    def save_soon(self, path: str | Path | None = None) -> bool:
        """Save the chosen run's current plane without freezing the interface: the strokes read
        back a band of rows per turn (:meth:`~.state.Annotation.sync_soon`), the map copied, the
        bundle written on a worker. Strokes made meanwhile go to the next save. ``False`` if
        there is nothing to save, a save is being written or the run is busy."""
        run, plane, session = self.current()
        if session is None or self._writing is not None:
            return False
        target = self._target(run, path)

        def synced() -> None:
            self.dirty = False
            self.path_label.setText("saving …")
            self._written_event.clear()
            self._writing = make_worker(self._write, target, session, session.snapshot(),
                                        returned=lambda folder: self._written(run, folder),
                                        errored=self._write_failed, finished=partial(setattr, self, "_writing", None))
            start(self._writing, self.state.synchronous)

        return run.sync_soon(plane, synced)

    def autosave(self) -> bool:
        """Save soon if anything changed since the last save (:meth:`_needs_saving`)."""
        return self._needs_saving() and self.save_soon()

    def _save_before_quit(self) -> None:
        """The application quits: no later turn comes, so what changed is saved now."""
        if self._needs_saving():
            self.save()

    def _target(self, run: Annotation, path: str | Path | None) -> Path:
        """``path``, else the bundle last saved or opened, else one in the config folder."""
        from .settings import settings_path

        return Path(path) if path else (run.session_path or settings_path().parent / "sessions" /
                                        (safe_filename(run.name) + SUFFIX))

    def _write(self, path: Path, session, snapshot) -> Path:
        """Write ``snapshot`` (of ``session``, whose cache it takes once built) as a bundle, on
        any thread; :class:`~maskdiffusion.errors.OutputError` if it cannot be written. A save
        waiting for this one is let go at the end."""
        try:
            snapshot.state = session.prepare()
            path.parent.mkdir(parents=True, exist_ok=True)
            return save_session(path, snapshot)
        except OSError as e:
            raise OutputError(f"cannot save the session to {path}: {e.strerror or e} (autosave is off)") from None
        finally:
            self._written_event.set()

    def _written(self, run: Annotation, folder: Path) -> Path:
        run.session_path = folder
        run.source = {"kind": "session", "path": str(folder)}
        self.path_label.setText(f"saved to {folder}")
        return folder

    def _write_failed(self, exc: BaseException) -> None:
        self.dirty = True
        self.path_label.setText("not saved")
        if isinstance(exc, OutputError):
            self.autosave_spin.setValue(0)
        report(exc)

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
        run, _, _ = self.current()
        start = str(run.session_path or "") if run is not None else ""
        path, _ = QFileDialog.getSaveFileName(self, "Save session", start, f"Session (*{SUFFIX})")
        if path and not self.save_soon(path) and run is not None:
            self.path_label.setText("not saved: the run is busy (refining, or a save is being written); "
                                    "save again in a moment")

    def _open_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open session folder (.mdsession)")
        if path:
            self.open(path)

"""The refine dock widget: correct a few strokes, the rest follows, without a model call.

Thin by design: the :class:`~maskdiffusion.session.Session` of the image (from
:mod:`.refine_session`) refines, undoes and changes classes; this widget reads the annotator's
map from the class layers (or a semantic map), writes the result back and drives the view.

- **Refine** (key ``R`` on the viewer) reassigns every pixel the annotator did not set; each
  changed layer gets it through ``data_setitem`` inside ``block_history``, so it is one Ctrl-Z
  per layer (on a semantic map, one Ctrl-Z). **Undo refinement** puts back every layer at once.
  **Live** refines at the end of each stroke.
- **Class by example**: a new class layer to paint, known to the session by its strokes only.
  Rename, remove (its pixels go to the best remaining class) and merge act on the session.
- **Confidence**: the margin between the two best classes on the class-map grid, as an image
  layer; **Next unsure region** centres the view on the largest low-margin region not yet seen.
- **Session**: save and open bundles (``.mdsession``); autosave every N minutes and when the
  application quits, to the last bundle saved or opened, else to ``sessions/`` in the plugin's
  config folder.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core import refine as R
from ..core.classes import ClassSpec, default_color
from ..session import SUFFIX, Session
from . import layers as L
from . import refine_session as S

if TYPE_CHECKING:
    import napari

__all__ = ["RefineWidget"]

CLASS_LAYERS = "class layers"
CONFIDENCE_NAME = "unsure (refine)"
AUTOSAVE_MINUTES = 2


def _unwrap(layer):
    return getattr(layer, "__wrapped__", layer)


class RefineWidget(QWidget):
    """Refine the class layers of an image from the annotator's strokes."""

    def __init__(self, viewer: napari.viewer.Viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self._writing = False
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._visited: list[tuple[int, int]] = []
        self._dirty = False
        self.session_path: Path | None = None
        self._example_color = default_color(0)

        layout = QVBoxLayout(self)
        layout.addWidget(self._target_box())
        layout.addWidget(self._class_box())
        layout.addWidget(self._confidence_box())
        layout.addWidget(self._session_box())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self._set_autosave(AUTOSAVE_MINUTES)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.reset_choices)
        viewer.bind_key("r", self._on_key, overwrite=True)
        from qtpy.QtWidgets import QApplication

        if QApplication.instance() is not None:
            QApplication.instance().aboutToQuit.connect(self.autosave)
        self.reset_choices()

    # ------------------------------------------------------------------ sections

    def _target_box(self) -> QGroupBox:
        box = QGroupBox("Refine")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.target_combo = QComboBox()
        self.target_combo.setToolTip("where the annotator edits: the class layers, or a merged semantic map")
        self.target_combo.currentTextChanged.connect(lambda _: self._watch_layers())
        form.addRow("Edit in", self.target_combo)
        row = QHBoxLayout()
        self.refine_button = QPushButton("Refine (R)")
        self.refine_button.setToolTip("reassign every pixel you did not paint, learning from your strokes")
        self.refine_button.clicked.connect(self.refine)
        self.undo_button = QPushButton("Undo refinement")
        self.undo_button.clicked.connect(self.undo_refinement)
        row.addWidget(self.refine_button)
        row.addWidget(self.undo_button)
        form.addRow(row)
        self.live_check = QCheckBox("Live: refine at the end of each stroke")
        form.addRow(self.live_check)
        return box

    def _class_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        form = QFormLayout(box)
        self.example_name = QLineEdit()
        self.example_name.setPlaceholderText("name of a class the text cannot name")
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
        self.class_combo = QComboBox()
        form.addRow("Class", self.class_combo)
        self.rename_edit = QLineEdit()
        self.rename_edit.setPlaceholderText("new name")
        rename = QPushButton("Rename")
        rename.clicked.connect(lambda: self.rename_class(self.class_combo.currentText(), self.rename_edit.text()))
        remove = QPushButton("Remove")
        remove.setToolTip("its pixels go to the best remaining class")
        remove.clicked.connect(lambda: self.remove_class(self.class_combo.currentText()))
        row = QHBoxLayout()
        row.addWidget(self.rename_edit, 1)
        row.addWidget(rename)
        row.addWidget(remove)
        form.addRow(row)
        self.merge_combo = QComboBox()
        merge = QPushButton("Merge into")
        merge.clicked.connect(lambda: self.merge_class(self.class_combo.currentText(), self.merge_combo.currentText()))
        row = QHBoxLayout()
        row.addWidget(merge)
        row.addWidget(self.merge_combo, 1)
        form.addRow(row)
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

    def _session_box(self) -> QGroupBox:
        box = QGroupBox("Session")
        form = QFormLayout(box)
        row = QHBoxLayout()
        save = QPushButton("Save…")
        save.clicked.connect(self._save_dialog)
        open_ = QPushButton("Open…")
        open_.clicked.connect(self._open_dialog)
        row.addWidget(save)
        row.addWidget(open_)
        form.addRow(row)
        self.autosave_spin = QSpinBox()
        self.autosave_spin.setRange(0, 120)
        self.autosave_spin.setSuffix(" min")
        self.autosave_spin.setSpecialValueText("off")
        self.autosave_spin.setValue(AUTOSAVE_MINUTES)
        self.autosave_spin.valueChanged.connect(self._set_autosave)
        form.addRow("Autosave", self.autosave_spin)
        self.path_label = QLabel("not saved yet")
        self.path_label.setWordWrap(True)
        form.addRow(self.path_label)
        return box

    # ------------------------------------------------------------------ layers

    def image_name(self) -> str:
        return self.image_combo.currentText()

    def class_layers(self) -> list[Labels]:
        return [_unwrap(ly) for ly in L.class_layers(self.viewer, self.image_name() or None)]

    def semantic_layers(self) -> list[Labels]:
        return [_unwrap(ly) for ly in self.viewer.layers if isinstance(ly, Labels)
                and ly.metadata.get("kind") == L.SEMANTIC and ly.metadata.get("image") == self.image_name()]

    def target_layer(self) -> Labels | None:
        """The semantic map edited in, or ``None`` for the class layers."""
        name = self.target_combo.currentText()
        return next((ly for ly in self.semantic_layers() if ly.name == name), None)

    def reset_choices(self, event=None) -> None:
        images = sorted({str(ly.metadata["image"]) for ly in L.class_layers(self.viewer) if ly.metadata.get("image")})
        current = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(images)
        if current in images:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        self._on_image_changed()

    def _on_image_changed(self, *_):
        target = self.target_combo.currentText()
        names = [CLASS_LAYERS, *(ly.name for ly in self.semantic_layers())]
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItems(names)
        if target in names:
            self.target_combo.setCurrentText(target)
        self.target_combo.blockSignals(False)
        self._refresh_classes()
        self._watch_layers()
        self._update_buttons()

    def _refresh_classes(self) -> None:
        session = self.session(build=False)
        names = [c.name for c in session.classes] if session else [ly.metadata.get("class", ly.name)
                                                                   for ly in self.class_layers()]
        for combo in (self.class_combo, self.merge_combo):
            current = combo.currentText()
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)

    def _update_buttons(self) -> None:
        ready = bool(self.image_name()) and S.has_session(self.image_name(), self._plane())
        self.refine_button.setEnabled(ready)
        self.undo_button.setEnabled(ready)
        if self.image_name() and not ready:
            self.status.setText("no refinement cache for this image: segment it with MaskDiffusion "
                                "(the run keeps its features) or open a session")

    def _watch_layers(self) -> None:
        for layer in [*self.class_layers(), *self.semantic_layers()]:
            if layer not in self._watched:
                layer.events.paint.connect(self._on_paint)
                self._watched.add(layer)

    def _plane(self) -> tuple[int, ...]:
        layers = self.class_layers()
        if not layers or layers[0].ndim <= 2:
            return ()
        return tuple(int(i) for i in self.viewer.dims.current_step[: layers[0].ndim - 2])

    def session(self, build: bool = True) -> Session | None:
        """The session of the chosen image plane (its cache is built on first use)."""
        name = self.image_name()
        if not name:
            return None
        return S.session_for(name, self._plane(), build=build)

    def _layer_for(self, spec: ClassSpec) -> Labels | None:
        name = spec.name.lower()
        return next((ly for ly in self.class_layers() if str(ly.metadata.get("class", "")).lower() == name), None)

    def read_map(self, session: Session) -> np.ndarray:
        """The annotator's map as (H, W) int16 class indices of ``session`` (-1 = none)."""
        plane = self._plane()
        index = {c.name.lower(): k for k, c in enumerate(session.classes)}
        semantic = self.target_layer()
        if semantic is not None:
            lut = np.full(max(L.layer_classes(semantic)) + 2, R.NO_CLASS, np.int16)
            for value, spec in L.layer_classes(semantic).items():
                lut[value] = index.get(spec.name.lower(), R.NO_CLASS)
            data = np.asarray(semantic.data[plane])
            return lut[np.minimum(data, len(lut) - 1)]
        current = np.full(session.labels.shape, R.NO_CLASS, np.int16)
        for layer in self.class_layers():
            k = index.get(str(layer.metadata.get("class", "")).lower())
            if k is not None:
                current[np.asarray(layer.data[plane]) != 0] = k
        return current

    def _set_plane(self, layer: Labels, values: np.ndarray) -> bool:
        plane = self._plane()
        old = np.asarray(layer.data[plane])
        changed = np.nonzero(old != values)
        if not changed[0].size:
            return False
        index = tuple(np.full(changed[0].size, p) for p in plane) + changed
        with layer.block_history():
            layer.data_setitem(index, values[changed].astype(layer.data.dtype, copy=False), refresh=False)
        layer.refresh()
        return True

    def write_map(self, session: Session, labels: np.ndarray) -> int:
        """Write ``labels`` into the edited layers, one undo step per changed layer."""
        self._writing = True
        try:
            semantic = self.target_layer()
            if semantic is not None:
                values = self._semantic_values(semantic, session)
                lut = np.zeros(session.state.n_classes + 1, np.int64)
                for k, spec in enumerate(session.classes):
                    lut[k] = values.get(spec.name.lower(), 0)
                return int(self._set_plane(semantic, lut[labels]))
            self._ensure_layers(session)
            changed = 0
            for k, spec in enumerate(session.classes):
                layer = self._layer_for(spec)
                if layer is not None:
                    changed += self._set_plane(layer, (labels == k).astype(np.uint8))
            return changed
        finally:
            self._writing = False

    @staticmethod
    def _semantic_values(layer: Labels, session: Session) -> dict[str, int]:
        """Label value of each session class in a semantic map; classes it lacks get new values."""
        classes = L.layer_classes(layer)
        values = {spec.name.lower(): v for v, spec in classes.items()}
        missing = [c for c in session.classes if c.name.lower() not in values]
        if missing:
            top = max(classes, default=0)
            for i, spec in enumerate(missing):
                classes[top + 1 + i] = spec
                values[spec.name.lower()] = top + 1 + i
            entries = [dict(c.to_dict(), value=v) for v, c in sorted(classes.items())]
            layer.metadata = {**layer.metadata, "classes": entries}
            if sorted(classes) == list(range(1, len(classes) + 1)):
                layer.colormap = L.semantic_colormap([classes[v] for v in sorted(classes)])
        return values

    def _ensure_layers(self, session: Session) -> None:
        """A class layer for every class of the session (classes by example get one here)."""
        layers = self.class_layers()
        if not layers:
            return
        first = layers[0]
        base = {k: v for k, v in first.metadata.items() if k not in ("class", "prompt", "prompts", "color", "index")}
        for k, spec in enumerate(session.classes):
            if self._layer_for(spec) is None:
                layer = self.viewer.add_labels(
                    np.zeros(first.data.shape, np.uint8), name=spec.name, colormap=L.class_colormap(spec.color),
                    opacity=0.6, metadata=L.class_metadata(base, spec, k), scale=tuple(first.scale),
                    translate=tuple(first.translate))
                layer.events.paint.connect(self._on_paint)
                self._watched.add(layer)

    # ------------------------------------------------------------------ actions

    def _active_session(self) -> Session | None:
        session = self.session()
        if session is None:
            show_error("MaskDiffusion refine: no refinement cache for this image (segment it first, or open a session)")
        return session

    def refine(self) -> np.ndarray | None:
        """Refine the chosen image from the edits; returns the new class-index map."""
        session = self._active_session()
        if session is None:
            return None
        fresh = session.sync(self.read_map(session))
        labels = session.refine()
        self.write_map(session, labels)
        self._after_change(f"refined from {int(session.edited.sum())} painted pixels ({fresh} new)")
        return labels

    def undo_refinement(self) -> None:
        """Undo the last refinement or class change on every layer at once."""
        session = self._active_session()
        if session is None:
            return
        steps = len(session.history)
        session.sync(self.read_map(session))
        labels = session.labels if len(session.history) < steps else session.undo()
        if labels is None:
            self.status.setText("nothing to undo")
            return
        self._sync_layers_to_classes(session)
        self.write_map(session, labels)
        self._after_change("undone")

    def add_example_class(self, name: str, color=None) -> Labels | None:
        """Add a class defined by its strokes: a new class layer (or a new value of the semantic
        map edited in), selected for painting."""
        session = self._active_session()
        if session is None:
            return None
        try:
            session.sync(self.read_map(session))
            k = session.add_class(ClassSpec(name, (), tuple(color) if color is not None else None))
        except ValueError as e:
            show_error(f"MaskDiffusion refine: {e}")
            return None
        spec = session.classes[k]
        layer = self.target_layer()
        if layer is not None:
            label = self._semantic_values(layer, session)[spec.name.lower()]
        else:
            self._ensure_layers(session)
            layer, label = self._layer_for(spec), 1
        if layer is not None:
            self.viewer.layers.selection.active = layer
            layer.mode = "paint"
            layer.selected_label = label
        self.example_name.clear()
        self._example_color = default_color(k + 1)
        self._show_color()
        self._after_change(f"added {name!r}: paint a few strokes of it, then Refine")
        return layer

    def _class_index(self, session: Session, name: str) -> int | None:
        try:
            return session.state.class_index(name)
        except KeyError as e:
            show_error(f"MaskDiffusion refine: {e.args[0]}")
            return None

    def remove_class(self, name: str) -> None:
        """Remove a class; its pixels go to the best remaining class."""
        session = self._active_session()
        k = None if session is None else self._class_index(session, name)
        if k is None:
            return
        try:
            labels = session.remove_class(k, self.read_map(session))
        except ValueError as e:
            show_error(f"MaskDiffusion refine: {e}")
            return
        self._sync_layers_to_classes(session)
        self.write_map(session, labels)
        self._after_change(f"removed {name!r}")

    def merge_class(self, source: str, into: str) -> None:
        """Merge class ``source`` into ``into`` (pixels and strokes)."""
        session = self._active_session()
        if session is None or source.lower() == into.lower():
            return
        s, k = self._class_index(session, source), self._class_index(session, into)
        if s is None or k is None:
            return
        labels = session.merge_classes([s], k, self.read_map(session))
        self._sync_layers_to_classes(session)
        self.write_map(session, labels)
        self._after_change(f"merged {source!r} into {into!r}")

    def rename_class(self, old: str, new: str) -> None:
        """Rename a class; its layer follows, its pixels stay."""
        session = self._active_session()
        k = None if session is None else self._class_index(session, old)
        if k is None:
            return
        layer = self._layer_for(session.classes[k])
        try:
            session.rename_class(k, new)
        except ValueError as e:
            show_error(f"MaskDiffusion refine: {e}")
            return
        spec = session.classes[k]
        if layer is not None:
            layer.name = spec.name
            layer.metadata = {**layer.metadata, "class": spec.name}
        for semantic in self.semantic_layers():
            entries = [dict(e, name=spec.name) if str(e.get("name", "")).lower() == old.lower() else e
                       for e in semantic.metadata.get("classes") or []]
            semantic.metadata = {**semantic.metadata, "classes": entries}
        self._after_change(f"renamed {old!r} to {spec.name!r}")

    def _sync_layers_to_classes(self, session: Session) -> None:
        """Remove class layers of classes the session no longer has; add missing ones."""
        names = {c.name.lower() for c in session.classes}
        for layer in self.class_layers():
            if str(layer.metadata.get("class", "")).lower() not in names:
                self.viewer.layers.remove(layer)
        self._ensure_layers(session)
        for k, spec in enumerate(session.classes):
            layer = self._layer_for(spec)
            if layer is not None and layer.metadata.get("index") != k:
                layer.metadata = {**layer.metadata, "index": k}

    def _after_change(self, message: str) -> None:
        self._dirty = True
        self._visited.clear()
        self._refresh_classes()
        self._update_buttons()
        if self.confidence_check.isChecked():
            self.update_confidence()
        self.status.setText(message)

    # ------------------------------------------------------------------ confidence

    def _reference_layer(self) -> Labels | None:
        layers = self.class_layers()
        return layers[0] if layers else self.target_layer()

    def update_confidence(self):
        """Show the session's grid margin as an image layer aligned with the class layers."""
        session = self.session()
        ref = self._reference_layer()
        if session is None or session.margin is None or ref is None:
            return None
        stride = session.state.stride
        scale = np.asarray(ref.scale[-2:], float)
        offset = np.asarray(ref.translate[-2:]) + scale * (stride - 1) / 2
        kwargs = {"scale": tuple(scale * stride), "translate": tuple(offset)}
        meta = {"software": L.SOFTWARE, "kind": L.CONFIDENCE, "image": self.image_name(), "role": "refine"}
        layer = next((ly for ly in self.viewer.layers if ly.metadata.get("role") == "refine"
                      and ly.metadata.get("image") == self.image_name()), None)
        if layer is None:
            layer = self.viewer.add_image(session.margin, name=CONFIDENCE_NAME, colormap="magma", opacity=0.5,
                                          metadata=meta, blending="translucent", **kwargs)
        else:
            layer.data = session.margin
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
        layer.contrast_limits = (0.0, float(max(np.quantile(session.margin, 0.95), 1e-6)))
        return layer

    def next_unsure_region(self):
        """Centre the view on the largest low-margin region not visited since the last change."""
        session = self._active_session()
        ref = self._reference_layer()
        if session is None or session.margin is None or ref is None:
            return None
        stride = session.state.stride
        found = R.next_unsure_region(session.margin, step=1, visited=self._visited)
        if found is None:
            self._visited.clear()
            show_info("no more unsure regions: starting over")
            return None
        (gy, gx), _ = found
        self._visited.append((gy, gx))
        pixel = (gy * stride + (stride - 1) / 2, gx * stride + (stride - 1) / 2)
        point = (*self._plane(), *pixel)
        world = ref.data_to_world(point)
        camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera
        camera.center = tuple(world[-2:]) if self.viewer.dims.ndisplay == 2 else tuple(world)
        self.status.setText(f"unsure region around row {int(pixel[0])}, column {int(pixel[1])}")
        return pixel

    # ------------------------------------------------------------------ events

    def _on_paint(self, event=None) -> None:
        if self._writing:
            return
        self._dirty = True
        if self.live_check.isChecked():
            QTimer.singleShot(0, self.refine)

    def _on_key(self, viewer) -> None:
        if self.refine_button.isEnabled():
            self.refine()

    # ------------------------------------------------------------------ session files

    def _default_path(self) -> Path:
        """Where autosave writes before the annotator picks a place: the plugin's config folder."""
        from .settings import settings_path

        return settings_path().parent / "sessions" / (L.safe_filename(self.image_name()) + SUFFIX)

    def save_session(self, path: str | Path | None = None) -> Path | None:
        """Save the chosen image's session (with the annotator's latest edits) as a bundle."""
        session = self.session()
        if session is None:
            return None
        session.sync(self.read_map(session))
        path = Path(path) if path else (self.session_path or self._default_path())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            folder = session.save(path)
        except OSError as e:
            self.autosave_spin.setValue(0)
            show_error(f"MaskDiffusion refine: cannot save the session to {path}: {e} (autosave is off)")
            return None
        self.session_path = folder
        self._dirty = False
        self.path_label.setText(f"saved to {folder}")
        return folder

    def autosave(self) -> Path | None:
        """Save if anything changed since the last save."""
        if self._dirty or (self.session(build=False) is not None and self.session_path is None):
            return self.save_session()
        return None

    def open_session(self, path: str | Path) -> list:
        """Open a bundle: its image (if still on disk) and class layers; continue refining."""
        from napari.layers import Layer

        try:
            data = S.read_session(path)
        except ValueError as e:
            show_error(f"MaskDiffusion refine: {e}")
            return []
        added = [self.viewer.add_layer(Layer.create(d, kw, t)) for d, kw, t in data]
        folder = Path(path)
        self.session_path = folder.parent if folder.name == "session.json" else folder
        image = next((kw["metadata"]["image"] for _, kw, t in data if t == "labels"), None)
        self.reset_choices()
        if image:
            self.image_combo.setCurrentText(image)
        self.path_label.setText(f"opened {self.session_path}")
        return added

    def _set_autosave(self, minutes: int) -> None:
        if minutes > 0:
            self.autosave_timer.start(int(minutes * 60_000))
        else:
            self.autosave_timer.stop()

    def _save_dialog(self) -> None:
        start = str(self.session_path or "")
        path, _ = QFileDialog.getSaveFileName(self, "Save session", start, f"Session (*{SUFFIX})")
        if path:
            self.save_session(path)

    def _open_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open session folder (.mdsession)")
        if path:
            self.open_session(path)

    def _pick_color(self) -> None:
        color = QColorDialog.getColor(QColor(*self._example_color), self, "Colour of the new class")
        if color.isValid():
            self._example_color = (color.red(), color.green(), color.blue())
            self._show_color()

    def _show_color(self) -> None:
        r, g, b = self._example_color
        self.color_button.setStyleSheet(f"background-color: rgb({r}, {g}, {b}); min-width: 24px;")

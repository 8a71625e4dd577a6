"""Entering classes in the dock: a line of comma-separated names (as the CLI takes them) and a
table of name, prompt text and colour, kept in step."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QColorDialog,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
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
    classes_from_rows,
    default_color,
    format_class_list,
    parse_class_list,
    read_class_file,
    with_free_colors,
    write_class_file,
)
from ..errors import BadInputError
from .notify import report

__all__ = ["PRESET_TITLES", "ClassEditor", "ClassTable"]

PRESET_TITLES = {
    "potsdam6": "ISPRS Potsdam (6 classes)",
    "potsdam3": "Potsdam-3 (3 classes)",
    "cityscapes": "Cityscapes (19 classes)",
    "cocostuff27": "COCO-Stuff-27",
}
_NAME, _PROMPT, _COLOR = range(3)


def _text_color(color) -> QColor:
    """Black or white, whichever reads on a cell of ``color``."""
    r, g, b = color
    return QColor(0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else QColor(255, 255, 255)


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
        self.set_rows((spec.name, "" if spec.prompts == (spec.name,) else spec.prompt, spec.color)
                      for spec in (as_class_specs(classes) if classes else []))

    def set_rows(self, rows) -> None:
        """Show ``rows`` of (name, prompt text, colour), without firing ``itemChanged``."""
        self.blockSignals(True)
        self.setRowCount(0)
        for name, prompt, color in rows:
            self.append_row(name, prompt, color)
        self.blockSignals(False)

    def append_row(self, name: str, prompt: str, color) -> None:
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
        item.setForeground(_text_color(color))
        item.setText("#{:02x}{:02x}{:02x}".format(*color))

    def _pick_color(self, row: int, column: int) -> None:
        if column != _COLOR:
            return
        chosen = QColorDialog.getColor(QColor(*self.item(row, _COLOR).data(Qt.UserRole)), self, "Class colour")
        if chosen.isValid():
            self.set_color(row, (chosen.red(), chosen.green(), chosen.blue()))

    def rows(self) -> list[tuple[str, str, tuple[int, int, int]]]:
        """The table's raw rows: (name, prompt text, colour)."""
        return [
            (self.item(r, _NAME).text() if self.item(r, _NAME) else "",
             self.item(r, _PROMPT).text() if self.item(r, _PROMPT) else "",
             self.item(r, _COLOR).data(Qt.UserRole))
            for r in range(self.rowCount())
        ]

    def classes(self) -> list[ClassSpec]:
        """The table as validated classes (:func:`~maskdiffusion.core.classes.classes_from_rows`)."""
        return classes_from_rows(self.rows())


class ClassEditor(QWidget):
    """The line, the table, presets and row buttons; ``changed`` fires with every valid edit."""

    changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.line = QLineEdit()
        self.line.setPlaceholderText("type classes: tree, grass, sand, road")
        self.line.setToolTip("Comma-separated class names, as the command line's --classes; "
                             "'name=prompt|prompt' gives prompt texts")
        self.line.editingFinished.connect(self._line_edited)
        self.preset_combo = QComboBox()
        self.preset_combo.addItem("Preset…")
        self.preset_combo.addItems(list(PRESET_TITLES.values()))
        self.preset_combo.activated.connect(self._on_preset)
        top.addWidget(self.line, 1)
        top.addWidget(self.preset_combo)
        layout.addLayout(top)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #ff6060;")
        self.error_label.setVisible(False)
        layout.addWidget(self.error_label)
        self.table = ClassTable()
        self.table.setMinimumHeight(90)
        self.table.itemChanged.connect(self._table_edited)
        layout.addWidget(self.table)
        self.error = ""

    def set_classes(self, classes) -> None:
        specs = as_class_specs(classes) if classes else []
        self.table.set_classes(specs)
        self.line.setText(format_class_list(specs))
        self._show_error("")

    def classes(self) -> list[ClassSpec]:
        """The classes, validated (``ClassListError`` names what is wrong)."""
        return self.table.classes()

    def _line_edited(self) -> None:
        text = self.line.text()
        colors = {name.lower(): color for name, _, color in self.table.rows()}
        try:
            specs = parse_class_list(text) if text.strip() else []
        except ClassListError as e:
            self._show_error(str(e))
            return
        specs = with_free_colors([ClassSpec(s.name, s.prompts, colors.get(s.name.lower())) for s in specs])
        self.table.set_classes(specs)
        self._show_error("")

    def _table_edited(self, _item) -> None:
        try:
            specs = self.table.classes()
        except ClassListError as e:
            self._show_error(str(e))
            return
        if any("," in name for name, _, _ in self.table.rows()):
            self.table.set_classes(specs)
        self.line.setText(format_class_list(specs))
        self._show_error("")

    def _show_error(self, error: str) -> None:
        """What is wrong with the classes, under the line (Run is greyed meanwhile)."""
        self.error = error
        self.error_label.setText(error)
        self.error_label.setVisible(bool(error))
        self.changed.emit()

    def _on_preset(self, index: int) -> None:
        if index > 0:
            self.set_classes(PRESETS[list(PRESET_TITLES)[index - 1]])
            self.preset_combo.setCurrentIndex(0)

    def _set_rows(self, rows, current: int | None = None) -> None:
        self.table.set_rows(rows)
        if current is not None:
            self.table.setCurrentCell(current, _NAME)
        self._table_edited(None)

    def add_row(self) -> None:
        rows = self.table.rows()
        self._set_rows([*rows, (f"class {len(rows) + 1}", "", default_color(len(rows)))], len(rows))

    def remove_row(self) -> None:
        row = self.table.currentRow()
        if row >= 0:
            self._set_rows([r for i, r in enumerate(self.table.rows()) if i != row])

    def move_row(self, delta: int) -> None:
        row, target = self.table.currentRow(), self.table.currentRow() + delta
        if row < 0 or not 0 <= target < self.table.rowCount():
            return
        rows = self.table.rows()
        rows[row], rows[target] = rows[target], rows[row]
        self._set_rows(rows, target)

    def load_file(self, path) -> None:
        try:
            self.set_classes(read_class_file(path))
        except ClassListError as e:
            report(e)

    def save_file(self, path) -> None:
        try:
            write_class_file(path, self.classes())
        except (ClassListError, OSError) as e:
            report(BadInputError(f"cannot save the class list: {e}"))

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load class list", "", "Class lists (*.json *.txt);;All files (*)")
        if path:
            self.load_file(path)

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save class list", "classes.json", "JSON (*.json)")
        if path:
            self.save_file(path)

    def buttons(self) -> QHBoxLayout:
        """Add, remove, reorder, load and save buttons for the table."""
        row = QHBoxLayout()
        for text, slot, tip in (
            ("+", self.add_row, "Add a class"),
            ("−", self.remove_row, "Remove the selected class"),
            ("↑", lambda: self.move_row(-1), "Move up"),
            ("↓", lambda: self.move_row(1), "Move down"),
            ("Load…", self._load_dialog, "Load a class list (.json or text)"),
            ("Save…", self._save_dialog, "Save the class list as .json"),
        ):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            row.addWidget(button)
        return row

"""The dock's run parameters, generated from :class:`~maskdiffusion.core.params.SegmentParams`.

Each field the dataclass marks for the dock (``widget=True`` in its metadata) becomes a magicgui
widget with the field's default, range and help text, so the dock, the command line and the
Python API share one name, one default and one explanation per parameter. The widgets take any
number typed (a spin box clamping each keystroke to its minimum made 128 come out as 4096); a
value out of the field's range is one message, never a silent clamp.
"""

from __future__ import annotations

import typing

from magicgui.widgets import ComboBox, Container, FloatSpinBox, SpinBox

from ..core.params import ParamsError, SegmentParams, face_fields

__all__ = ["params_form", "params_from_form"]

#: How far past a field's maximum a number can be typed, so that it is refused with a message.
_TYPING_ROOM = 16


def _label(name: str) -> str:
    return name.replace("_", " ").capitalize()


def params_form() -> Container:
    """A magicgui form with one widget per dock parameter, named after the field."""
    hints = typing.get_type_hints(SegmentParams)
    widgets = []
    for f in face_fields("widget"):
        meta, kind = f.metadata, hints[f.name]
        options = {"name": f.name, "label": _label(f.name), "tooltip": meta["help"]}
        if "choices" in meta:
            widget = ComboBox(choices=list(meta["choices"]), value=f.default, **options)
        elif kind is float:
            widget = FloatSpinBox(value=f.default, min=0, max=_TYPING_ROOM * meta["max"], step=meta["step"], **options)
        else:
            value = 0 if f.default is None else f.default
            widget = SpinBox(value=value, min=0, max=_TYPING_ROOM * meta["max"], step=meta.get("step", 1), **options)
            if meta.get("off") and hasattr(widget.native, "setSpecialValueText"):
                widget.native.setSpecialValueText(meta["off"])
        if meta.get("suffix") and hasattr(widget.native, "setSuffix"):
            widget.native.setSuffix(meta["suffix"])
        widgets.append(widget)
    return Container(widgets=widgets)


def params_from_form(form: Container, **extra) -> SegmentParams:
    """The :class:`SegmentParams` the form shows (0 means ``None`` for optional counts);
    :class:`~maskdiffusion.core.params.ParamsError` names a value out of its field's range."""
    hints = typing.get_type_hints(SegmentParams)
    values = {}
    for f in face_fields("widget"):
        meta, value = f.metadata, form[f.name].value
        if value == 0 and type(None) in typing.get_args(hints[f.name]):
            value = None
        elif "min" in meta and not meta["min"] <= value <= meta["max"]:
            raise ParamsError(f"{_label(f.name).lower()} must be between {meta['min']} and {meta['max']}"
                              f"{meta.get('suffix', '')}, not {value}")
        values[f.name] = round(value, 4) if isinstance(value, float) else value
    return SegmentParams(**values, **extra)

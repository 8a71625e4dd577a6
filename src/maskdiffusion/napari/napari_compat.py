"""napari's private API, in one place (``tests/test_architecture.py`` checks that no other module
of the plugin touches a private attribute of napari's objects).

Each function says what it needs and falls back to public behaviour when napari changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

__all__ = ["after_next_draw", "outside_history", "stroke_region", "unwrapped"]

Region = tuple[int, int, int, int]


def unwrapped(viewer: napari.Viewer) -> napari.Viewer:
    """The viewer itself where npe2 hands a dock widget a ``PublicOnlyProxy`` of it.

    Annotations bind their layers by identity. Through the proxy every layer napari returns is
    a new proxy object, never the layer napari's events carry: a run's own layers were not
    recognised as its own, and a second annotation adopted them.
    """
    return getattr(viewer, "__wrapped__", viewer)


@contextmanager
def outside_history(layer: Labels) -> Iterator[None]:
    """Writes that napari's own undo history does not record: the session holds their undo."""
    if not hasattr(layer, "_staged_history"):
        yield
        return
    staged, blocked = layer._staged_history, layer._block_history
    layer._staged_history, layer._block_history = [], True
    try:
        yield
    finally:
        layer._staged_history, layer._block_history = staged, blocked


def stroke_region(event_value, plane: tuple[int, ...], shape: tuple[int, int]) -> Region | None:
    """The (y0, y1, x0, x1) box the history atoms of a napari paint event touched on ``plane``
    (``None`` if the event says nothing usable: the caller then reads the whole plane)."""
    boxes = []
    for atom in event_value or ():
        key = getattr(atom, "slice_key", None)
        if key is not None:
            ys, xs = key[-2], key[-1]
            boxes.append((ys.start or 0, ys.stop or shape[0], xs.start or 0, xs.stop or shape[1]))
        elif isinstance(atom, tuple) and len(atom) == 3 and len(atom[0]) >= 2 and len(atom[0][-1]):
            ys, xs = atom[0][-2], atom[0][-1]
            boxes.append((int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1))
    if not boxes:
        return None
    return min(b[0] for b in boxes), max(b[1] for b in boxes), min(b[2] for b in boxes), max(b[3] for b in boxes)


def after_next_draw(viewer: napari.Viewer, callback: Callable[[], None]) -> None:
    """Call ``callback`` once the canvas has drawn (a removed layer's GL objects are released
    at a draw: two Labels layers removed before one crashed napari 0.9.2 under software
    OpenGL), or after a short wait where the canvas cannot be reached or is not shown (at once
    for a viewer without a window)."""
    window = getattr(viewer, "window", None)
    if window is None:  # a ViewerModel: nothing is drawn
        callback()
        return
    from qtpy.QtCore import QTimer

    canvas = getattr(getattr(window, "_qt_viewer", None), "canvas", None)
    events = getattr(canvas, "events", None)
    native = getattr(canvas, "native", None)
    if events is None or native is None or not native.isVisible():
        QTimer.singleShot(50, callback)
        return
    done = []

    def once(*_):
        if done:
            return
        done.append(True)
        events.draw.disconnect(once)
        QTimer.singleShot(1, callback)

    events.draw.connect(once)
    native.update()
    QTimer.singleShot(500, once)

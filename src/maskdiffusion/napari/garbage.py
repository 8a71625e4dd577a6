"""Keep CPython's full garbage collections off the interface's frames.

A full collection walks every object the collector tracks. With napari, torch, diffusers and a
loaded model that is about 0.6 M objects, 0.27–0.36 s during which no thread runs Python: the
window froze for that long at whatever moment the allocation count tripped it (at 6000², inside
adding the second class layer). Nearly all of those objects live as long as the window does
(modules, the viewer, the model), so at the rest points of a session (a model loaded, a run
shown) :func:`settle` moves what is alive out of the collector's walk with :func:`gc.freeze`;
later collections walk only what came after (milliseconds).

Frozen objects are never collected, so whatever the dock drops that may sit in a reference
cycle (a removed layer, a replaced model, a closed window) goes through :func:`release`, which
gives them back to the collector; nothing is frozen again until a full collection has run.
Nothing is frozen for a window that is not on screen: it has no frames to stall.

Loading a model makes ~0.5 M objects at once (the modules of diffusers and transformers, the
model's own): the collections that tripped meanwhile took 0.1–0.2 s each, and one over them
afterwards 0.2 s, to find ~3 K unreachable objects. :func:`paused` keeps collections off while
such a burst is made and freezes what it made without walking it.

Whether anything is frozen is kept here: :func:`gc.get_freeze_count` walks the whole frozen
list to count it (50 ms for 0.6 M objects scattered in memory), as long as a collection.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused", "release", "settle"]

_released = False
_frozen = False


def settle(widget=None) -> bool:
    """Freeze what is alive now, once young garbage is collected; returns whether it froze.

    Skipped while the window of ``widget`` is not on screen (or it was deleted; a widget in a
    hidden tab still counts), or while objects released by :func:`release`
    still wait for the full collection that frees them.
    """
    global _frozen
    try:
        off_screen = widget is not None and not widget.window().isVisible()
    except RuntimeError:  # the widget was deleted meanwhile (its window closed)
        off_screen = True
    if _released or off_screen:
        return False
    gc.collect(2 if _frozen else 1)
    gc.freeze()
    _frozen = True
    return True


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collections inside. On leaving, if objects are frozen (a window on screen),
    what is alive joins them without a walk (the few cycles the burst left unreachable are
    kept); if released objects still wait for the collection that frees them, that collection
    runs now, once, where a collection would have run during the burst anyway. For a worker
    thread: collections are off process-wide meanwhile; a ``paused`` in force is left alone."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if _released:
            gc.collect()
        elif _frozen:
            gc.freeze()
        gc.enable()


def release() -> None:
    """Give every frozen object back to the collector (call when something long-lived is dropped)."""
    global _released, _frozen
    if _frozen:
        gc.unfreeze()
        _frozen, _released = False, True


def _on_collection(phase: str, info: dict) -> None:
    global _released
    if phase == "stop" and info["generation"] == 2:
        _released = False


gc.callbacks.append(_on_collection)

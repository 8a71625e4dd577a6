"""Work on the interface's thread cut into event-loop turns, so that a 6000² map never freezes it.

The one scheduler of the napari face: writing a session's map into its layers, reading strokes
back, painting a run's rows as they stream in, and removing layers all go through
:func:`in_turns`, in bands of :func:`row_bands`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

__all__ = ["BAND_PIXELS", "TURN_SECONDS", "in_turns", "next_turn", "row_bands"]

#: Pixels of one layer written or read in one piece (3–5 ms in a 6000² layer here).
BAND_PIXELS = 1 << 18
#: Seconds of pieces per turn: the plugin's own callbacks stay under 50 ms with the slowest piece.
TURN_SECONDS = 0.02


def row_bands(height: int, width: int, y0: int = 0, y1: int | None = None) -> list[tuple[int, int]]:
    """Bands of rows ``(start, stop)`` covering ``y0:y1`` of about :data:`BAND_PIXELS` each.

    Examples
    --------
    >>> row_bands(10, 1 << 17)
    [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    >>> row_bands(3000, 3000, 100, 200)
    [(100, 187), (187, 200)]
    """
    y1 = height if y1 is None else y1
    rows = max(1, BAND_PIXELS // max(width, 1))
    return [(start, min(y1, start + rows)) for start in range(y0, y1, rows)]


def next_turn(callback: Callable[[], None], delay_ms: int = 1) -> None:
    """Run ``callback`` at a later turn of the Qt event loop, after the timers and input due."""
    from qtpy.QtCore import QTimer

    QTimer.singleShot(delay_ms, callback)


def in_turns(pieces: Iterable[Callable[[], bool | None]], then: Callable[[], None] | None = None,
             defer: Callable[[Callable[[], None]], None] = next_turn) -> None:
    """Call ``pieces`` in order, those of :data:`TURN_SECONDS` (at least one) per event-loop turn,
    then ``then()``.

    The first turn runs now, so work that fits in one turn is done at once. A piece that returns
    True ends its turn (a layer added or removed: napari draws before the next piece).

    Examples
    --------
    >>> done = []
    >>> in_turns([lambda: done.append(1), lambda: done.append(2)], lambda: done.append("end"))
    >>> done
    [1, 2, 'end']
    """
    pieces = iter(pieces)

    def turn():
        end = time.perf_counter() + TURN_SECONDS
        while True:
            piece = next(pieces, None)
            if piece is None:
                if then is not None:
                    then()
                return
            if piece() or time.perf_counter() >= end:
                break
        defer(turn)

    turn()

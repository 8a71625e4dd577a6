"""What the annotator's panels share for one viewer: one typed state object, no module globals.

:class:`AnnotatorState` holds the loaded model and one :class:`ImageRun` per segmented image,
keyed by the image layer object (renaming a layer changes nothing; two viewers have two states).
An :class:`ImageRun` binds the run's class layers (and a merged semantic map, if any) to one
:class:`~maskdiffusion.session.Session` per image plane: the session's label map is the truth,
the layers show it. A stroke in any layer becomes one session step (it wins where it was
painted; the other layers give those pixels up), and Ctrl-Z / Ctrl-Shift-Z in any of the
layers undo and redo session steps, so every pixel always has exactly one class or none.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassSpec
from .garbage import release
from .images import LayerImage
from .layers import CLASS, DRAFT, SEMANTIC, STROKE, layer_classes, write_into_layer

if TYPE_CHECKING:
    from napari.layers import Labels, Layer

    from ..model.loading import SDModel
    from ..session import Session

__all__ = ["AnnotatorState", "ImageRun", "Turn", "in_turns", "next_turn", "stroke_region"]

Region = tuple[int, int, int, int]
_UNDO, _REDO = "Control-Z", "Control-Shift-Z"
#: Pixels of one layer written or read in one piece when a whole map changes (3–5 ms to write
#: into a 6000² layer here).
BAND_PIXELS = 1 << 18
#: Seconds of such pieces per event-loop turn, so that a turn and the redraw after it (50 ms for
#: four 6000² layers under Xvfb's software renderer, 70–90 ms while a run uses the other core)
#: stay under 100 ms; see :class:`Turn`.
TURN_SECONDS = 0.02
#: The wait after a turn that shows a layer: napari uploads its whole texture at the redraw that
#: follows (110–180 ms for 6000² under Xvfb), and the timers and input due meanwhile (a 1 ms
#: timer of ours would be the first) should run before more work, not after it.
AFTER_SHOW_MS = 30
#: A change of more than 1/DENSE_SHARE of a map's pixels is shown by refreshing whole layers.
DENSE_SHARE = 50


def next_turn(callback: Callable[[], None], delay_ms: int = 1) -> None:
    """Run ``callback`` at the next turn of the Qt event loop, after its timers and input.

    A 1 ms timer, not 0: a chain of zero timers kept a 10 ms timer waiting two turns (230 ms
    gaps instead of 110 while a 6000² map was written), and took longer in all. Use
    :data:`AFTER_SHOW_MS` after a turn that showed a layer.
    """
    from qtpy.QtCore import QTimer

    QTimer.singleShot(delay_ms, callback)


class Turn:
    """One event-loop turn's time for pieces of work. Call :meth:`fits` before each piece: it
    allows the next one only if one as long as the longest so far still ends within
    ``seconds`` (default :data:`TURN_SECONDS`), so a turn ends before its budget, not a piece
    after it. The first always fits.

    Examples
    --------
    >>> turn, pieces = Turn(0.05), [0.02] * 10
    >>> while pieces and turn.fits():
    ...     time.sleep(pieces.pop())
    >>> 0 < len(pieces) < 10
    True
    """

    def __init__(self, seconds: float | None = None):
        self.end = time.perf_counter() + (TURN_SECONDS if seconds is None else seconds)
        self.longest = 0.0
        self._last: float | None = None

    def fits(self) -> bool:
        now = time.perf_counter()
        if self._last is None:
            self._last = now
            return True
        self.longest = max(self.longest, now - self._last)
        self._last = now
        return now + self.longest <= self.end


def in_turns(pieces: Iterable[Callable[[], bool | None]], then: Callable[[], None] | None = None,
             defer: Callable[[Callable[[], None]], None] = next_turn) -> None:
    """Call ``pieces`` in order, as many per event-loop turn as fit in a :class:`Turn`,
    then ``then()``. The first turn runs now, so work that fits in one turn is done at once. A
    piece that returns True ends its turn (its cost comes at the redraw that follows)."""
    pieces = iter(pieces)

    def turn():
        clock = Turn()
        while clock.fits():
            piece = next(pieces, None)
            if piece is None:
                if then is not None:
                    then()
                return
            if piece():
                break
        defer(turn)

    turn()


def stroke_region(event_value, plane: tuple[int, ...], shape: tuple[int, int]) -> Region | None:
    """The (y0, y1, x0, x1) box a napari paint event's history atoms touched on ``plane``."""
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


def _session_band(session: Session, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A band of the session: its labels, its painted pixels and the value a class layer shows
    for each pixel of its class (:data:`STROKE` where painted, else :data:`DRAFT`)."""
    y0, y1, x0, x1 = region
    labels, edited = session.labels[y0:y1, x0:x1], session.edited[y0:y1, x0:x1]
    shades = np.multiply(edited, np.uint8(STROKE - DRAFT), dtype=np.uint8)
    shades += np.uint8(DRAFT)
    return labels, edited, shades


def _class_view(labels: np.ndarray, shades: np.ndarray, value: int) -> np.ndarray:
    """What the class layer of label ``value`` shows of a band of the map: its pixels in their
    shades (:func:`_session_band`), 0 elsewhere."""
    return np.multiply(labels == value, shades, dtype=np.uint8)


@dataclass(eq=False)
class ImageRun:
    """One segmented image in the viewer: its class layers and one session per plane.

    layers: the class layers, in class order (``layers[k - 1]`` shows label value k).
    semantic: a merged semantic map kept in step with them, if the annotator made one.
    on_change: called after every session step made from the layers (a stroke, an undo), and
        with "classes" before an undo or redo changes the classes (so their layers exist first).
    defer: how band writes wait for the next turn of the event loop.
    background: how heavy session work (undo of a 6000² refinement, a refinement) runs off the
        interface's thread: ``background(work, then)``; ``None`` runs it in place.
    """

    image: LayerImage
    layers: list = field(default_factory=list)
    sessions: dict = field(default_factory=dict)
    semantic: Labels | None = None
    session_path: Path | None = None
    on_change: Callable[[ImageRun, str], None] | None = None
    writing: bool = False
    pending_writes: int = 0
    defer: Callable[[Callable[[], None]], None] = next_turn
    background: Callable[[Callable, Callable], None] | None = None
    busy: bool = False

    @property
    def classes(self) -> tuple[ClassSpec, ...]:
        session = next(iter(self.sessions.values()), None)
        return session.classes if session is not None else ()

    @property
    def all_layers(self) -> list:
        return [*self.layers, *([self.semantic] if self.semantic is not None else [])]

    def session(self, plane: tuple[int, ...] = ()) -> Session | None:
        return self.sessions.get(tuple(plane))

    @property
    def idle(self) -> bool:
        """No session work running and every layer showing the session's map: only then may a
        stroke or an undo start (a stroke over a band not yet shown would take its old class)."""
        return not self.busy and self.pending_writes == 0

    def hold_layers(self) -> None:
        """Layers editable exactly while the run is :attr:`idle`."""
        for layer in self.all_layers:
            layer.editable = self.idle

    def owns(self, layer: Layer) -> bool:
        return any(layer is own for own in self.all_layers)

    # ------------------------------------------------------------------ layers <-> session

    def _layer_values(self, layer: Labels, session: Session) -> np.ndarray | None:
        """For a semantic map: the session label value of each of its values (lookup table)."""
        if layer.metadata.get("kind") != SEMANTIC:
            return None
        index = {c.name.lower(): k for k, c in enumerate(session.classes, start=1)}
        by_value = layer_classes(layer)
        lut = np.zeros(max(by_value, default=0) + 2, np.int64)
        for value, spec in by_value.items():
            lut[value] = index.get(spec.name.lower(), 0)
        return lut

    def read_strokes(self, layer: Labels, plane: tuple[int, ...], region: Region | None = None,
                     session_band: tuple[np.ndarray, ...] | None = None):
        """What the annotator changed in ``layer`` since the session last wrote it: (region,
        new labels, painted, released) over that region, or ``None`` if nothing changed.
        ``session_band``: :func:`_session_band` over the region, when already read."""
        session = self.sessions[tuple(plane)]
        height, width = session.labels.shape
        region = region or (0, height, 0, width)
        y0, y1, x0, x1 = region
        current = np.asarray(layer.data[(*plane, slice(y0, y1), slice(x0, x1))])
        labels, edited, shades = session_band or _session_band(session, region)
        lut = self._layer_values(layer, session)
        if lut is None:
            value = next((k for k, own in enumerate(self.layers, start=1) if own is layer), None)
            if value is None:
                return None
            if np.array_equal(current, _class_view(labels, shades, value)):
                return None
            expected = labels == value
            confirmed = expected & edited
            painted = ((current == STROKE) & ~confirmed) | ((current != 0) & ~expected)
            released = expected & (current == 0)
            new = np.where(painted, value, labels)
        else:
            mapped = lut[np.minimum(current, len(lut) - 1)]
            painted = (mapped != labels) & (mapped > 0)
            released = (current == 0) & (labels > 0)
            new = np.where(painted, mapped, labels)
        if not painted.any() and not released.any():
            return None
        return (y0, y1, x0, x1), new, painted, released

    def _take(self, layer: Labels, plane: tuple[int, ...], region: Region | None,
              session_band: tuple[np.ndarray, ...] | None = None) -> int | None:
        """Make ``layer``'s changes over ``region`` one session step and show it in every layer;
        the pixels painted, or ``None`` if the layer showed the session's map."""
        found = self.read_strokes(layer, plane, region, session_band)
        if found is None:
            return None
        box, new, painted, released = found
        n = self.sessions[tuple(plane)].edit(new, painted, released, region=box)
        self.write(plane, box)
        return n

    def sync(self, layer: Labels, plane: tuple[int, ...] = (), region: Region | None = None) -> int:
        """Take a stroke from ``layer`` into the plane's session (one undo step) and show it in
        every layer of the run; returns the number of pixels painted."""
        if self.writing or not self.idle or tuple(plane) not in self.sessions:
            return 0
        n = self._take(layer, plane, region)
        if n is None:
            return 0
        if self.on_change is not None:
            self.on_change(self, "paint")
        return n

    def sync_all(self, plane: tuple[int, ...] = ()) -> int:
        """Take the changes of every layer of the run (bottom to top, so the top one wins)."""
        return sum(self.sync(layer, plane) for layer in self.all_layers)

    def sync_soon(self, plane: tuple[int, ...], then: Callable[[int], None]) -> bool:
        """:meth:`sync_all` a band of rows at a time, :func:`in_turns`, the layers read-only
        meanwhile, then ``then(pixels painted)``: reading back every 6000² layer never freezes
        the interface. ``False`` if the run is not idle."""
        if self.writing or not self.idle or tuple(plane) not in self.sessions:
            return False
        session = self.sessions[tuple(plane)]
        height, width = session.labels.shape
        rows = max(1, BAND_PIXELS // max(width, 1))
        painted = 0
        self.busy = True
        self.hold_layers()

        def band(start: int):
            nonlocal painted
            y1 = min(height, start + rows)
            shown = None
            for layer in self.all_layers:
                shown = shown or _session_band(session, (start, y1, 0, width))
                taken = self._take(layer, tuple(plane), (start, y1, 0, width), shown)
                if taken is not None:
                    painted, shown = painted + taken, None

        def done():
            self.busy = False
            self.hold_layers()
            then(painted)

        in_turns((lambda start=start: band(start) for start in range(0, height, rows)), done, self.defer)
        return True

    def write(self, plane: tuple[int, ...] = (), region: Region | None = None, only: int | None = None,
              refresh: bool = True) -> int:
        """Show the plane's session map in every layer of the run (only pixels that differ), or
        in the ``only``-th one (0-based; the semantic map is the last). ``refresh``: see
        :func:`~.layers.write_into_layer`. Returns the number of pixels changed."""
        return sum(self._write(plane, region, only, refresh))

    def _write(self, plane: tuple[int, ...], region: Region | None, only: int | None, refresh: bool) -> list[int]:
        """:meth:`write`, returning the pixels changed in each of :attr:`all_layers`."""
        session = self.sessions[tuple(plane)]
        height, width = session.labels.shape
        y0, y1, x0, x1 = region or (0, height, 0, width)
        labels, _, shades = _session_band(session, (y0, y1, x0, x1))
        changed = [0] * len(self.all_layers)
        self.writing = True
        try:
            for value, layer in enumerate(self.layers, start=1):
                if only is None or only == value - 1:
                    changed[value - 1] = write_into_layer(layer, _class_view(labels, shades, value), tuple(plane),
                                                          (y0, y1, x0, x1), refresh=refresh)
            if self.semantic is not None and (only is None or only == len(self.layers)):
                values = self._semantic_values(session)
                changed[-1] = write_into_layer(self.semantic, values[labels], tuple(plane), (y0, y1, x0, x1),
                                               refresh=refresh)
        finally:
            self.writing = False
        return changed

    def _semantic_values(self, session: Session) -> np.ndarray:
        """Value in the semantic map of each session label value (0 stays 0)."""
        by_name = {spec.name.lower(): v for v, spec in layer_classes(self.semantic).items()}
        values = np.zeros(len(session.classes) + 1, np.int64)
        for k, spec in enumerate(session.classes, start=1):
            values[k] = by_name.get(spec.name.lower(), 0)
        return values

    def write_soon(self, plane: tuple[int, ...] = (), changed: np.ndarray | None = None,
                   then: Callable[[], None] | None = None) -> None:
        """Show the map one layer's band of rows at a time, :func:`in_turns` (only the rows
        holding ``changed`` flat pixel indices, when given), then call ``then``: a 6000² map
        never freezes the interface for the whole of it. A change of more than 1/DENSE_SHARE
        of the pixels (or an unknown one) is written straight into the arrays and each layer
        that changed is then refreshed once, a layer per turn (a band of every layer a piece:
        the band's labels are read once)."""
        session = self.sessions[tuple(plane)]
        height, width = session.labels.shape
        y0, y1 = 0, height
        if changed is not None:
            if not len(changed):
                y0 = y1 = 0
            else:
                y0, y1 = int(changed.min()) // width, int(changed.max()) // width + 1
        rows = max(1, BAND_PIXELS // max(width, 1))
        dense = changed is None or len(changed) * DENSE_SHARE > height * width
        written = [0] * len(self.all_layers)
        self.pending_writes += 1
        self.hold_layers()

        def write(start: int, k: int | None):
            counts = self._write(plane, (start, min(y1, start + rows), 0, width), k, not dense)
            written[:] = [a + b for a, b in zip(written, counts)]

        def show(k: int) -> bool:
            if written[k]:
                self.all_layers[k].refresh()
            return bool(written[k])

        def done():
            self.pending_writes -= 1
            self.hold_layers()
            if then is not None:
                then()

        layers = range(len(self.all_layers))
        if dense:
            pieces = [partial(write, start, None) for start in range(y0, y1, rows)]
            pieces += [partial(show, k) for k in layers]
        else:
            pieces = [partial(write, start, k) for start in range(y0, y1, rows) for k in layers]
        in_turns(pieces, done, self.defer)

    def _step(self, plane: tuple[int, ...], method: str) -> bool:
        session = self.sessions.get(tuple(plane))
        if session is None or not self.idle or not (session.history if method == "undo" else session.future):
            return False
        step = session.history[-1] if method == "undo" else session.future[-1]

        def done(_=None):
            if step.classes_before != step.classes_after and self.on_change is not None:
                self.on_change(self, "classes")

            def written():
                if self.on_change is not None:
                    self.on_change(self, method)

            self.write_soon(plane, step.changed, written)

        self.in_background(getattr(session, method), done)
        return True

    def in_background(self, work: Callable, then: Callable) -> None:
        """Run ``work`` off the interface's thread (the dock sets :attr:`background`), with the
        run busy meanwhile: no stroke is taken and no undo starts until ``then`` has run."""
        if self.background is None:
            then(work())
            return
        self.busy = True
        self.hold_layers()

        def finish(result):
            self.busy = False
            self.hold_layers()
            then(result)

        self.background(work, finish)

    def undo(self, plane: tuple[int, ...] = ()) -> bool:
        """Undo the plane's last session step in every layer at once."""
        return self._step(plane, "undo")

    def redo(self, plane: tuple[int, ...] = ()) -> bool:
        """Redo the plane's last undone session step in every layer at once."""
        return self._step(plane, "redo")

    # ------------------------------------------------------------------ events

    def bind(self, layer: Labels, current_plane: Callable[[], tuple[int, ...]],
             defer: Callable[[Callable[[], None]], None] = next_turn) -> None:
        """Route a layer's strokes to :meth:`sync` and its Ctrl-Z / Ctrl-Shift-Z to the session.

        napari announces some paints before it writes them, so the sync runs through ``defer``
        (by default at the next turn of the event loop).
        """
        me = weakref.ref(self)

        def on_paint(event):
            run = me()
            if run is None or run.writing:
                return
            plane = current_plane()
            session = run.sessions.get(plane)
            shape = session.labels.shape if session is not None else layer.data.shape[-2:]
            region = stroke_region(getattr(event, "value", None), plane, shape)
            source = event.source
            defer(lambda: run.sync(source, plane, region))

        def undo(own):
            run = me()
            if run is None or not run.owns(own):
                own.undo()
            else:
                run.undo(current_plane())

        def redo(own):
            run = me()
            if run is None or not run.owns(own):
                own.redo()
            else:
                run.redo(current_plane())

        layer.events.paint.connect(on_paint)
        if layer.metadata.get("kind") == CLASS:
            layer.selected_label = STROKE
        layer.bind_key(_UNDO, undo, overwrite=True)
        layer.bind_key(_REDO, redo, overwrite=True)


@dataclass(eq=False)
class AnnotatorState:
    """The dock's shared state for one viewer: the model and the runs, keyed by layer objects."""

    model: SDModel | None = None
    model_key: tuple | None = None
    runs: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary)

    def set_model(self, model, key: tuple) -> None:
        """Keep one model: the previous one is dropped (and its memory given back)."""
        if self.model is not None and self.model is not model:
            from ..model.loading import clear_model_cache

            self.model = None
            release()
            clear_model_cache()
        self.model, self.model_key = model, key

    def run_of(self, layer: Layer | None) -> ImageRun | None:
        """The run of an image layer, or the run a class layer (or semantic map) belongs to."""
        if layer is None:
            return None
        run = self.runs.get(layer)
        if run is not None:
            return run
        return next((r for r in self.runs.values() if r.owns(layer)), None)

    def image_of(self, run: ImageRun):
        """The image layer (the key) of a run."""
        return next((key for key, r in self.runs.items() if r is run), None)

    def forget_layers(self, removed: Sequence[Layer]) -> None:
        """Drop class layers the viewer no longer has; a run without layers is dropped."""
        for key, run in list(self.runs.items()):
            run.layers = [ly for ly in run.layers if not any(ly is gone for gone in removed)]
            if run.semantic is not None and any(run.semantic is gone for gone in removed):
                run.semantic = None
            if not run.layers and run.semantic is None:
                del self.runs[key]

    def class_layer_runs(self) -> list[ImageRun]:
        return [r for r in self.runs.values() if r.layers and r.layers[0].metadata.get("kind") == CLASS]

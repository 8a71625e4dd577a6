"""One annotation per image: its classes (each with a stable id), one session per plane, and the
class layers bound to it by identity.

Every class layer carries ``metadata["annotation"]`` (the annotation's id) and
``metadata["class_id"]`` (its class's id), so what the annotator does in napari's layer list is
read from identity, never from a layer's position or name:

- a stroke in any layer becomes one session step (it wins where it was painted; the other
  layers give those pixels up), and Ctrl-Z / Ctrl-Shift-Z in any layer undo and redo the
  session's steps, so every pixel always has exactly one class or none;
- a class layer deleted in the layer list deletes its class as one undoable step (its pixels
  become unlabelled; Undo brings the class and its layer back);
- a layer renamed in the list renames its class (one undoable step);
- reordering layers changes nothing.

Every route into the viewer gives the same :class:`Annotation`: a run in the dock
(:meth:`Annotation.start_run` … :meth:`Annotation.finish_run`), and layers opened from our
files (:meth:`AnnotatorState.adopt`). Layers the plugin removes go one per drawn frame
(:func:`remove_layers`).
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from ..core.classes import ClassSpec, new_class_id
from ..core.labels import class_view, class_view_edits
from ..errors import BadInputError
from .images import LayerImage, describe_image
from .layers import ANNOTATION, CLASS, CLASS_ID, STROKE, class_layer_data, layer_class, write_into_layer
from .napari_compat import after_next_draw, stroke_region
from .turns import in_turns, next_turn, row_bands

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer

    from ..model.loading import SDModel
    from ..session import Session

__all__ = ["Annotation", "AnnotatorState", "remove_layers"]

Region = tuple[int, int, int, int]
_UNDO, _REDO = "Control-Z", "Control-Shift-Z"
_LEAVING = "leaving"
#: A change of more than 1/DENSE_SHARE of a map's pixels is written straight into the layers'
#: arrays and each layer refreshed once (one redraw, not dozens of partial ones).
DENSE_SHARE = 50


def remove_layers(viewer: napari.Viewer, layers: Sequence[Layer], then: Callable[[], None] | None = None) -> None:
    """Remove ``layers`` from the viewer one per drawn frame, then call ``then``.

    napari 0.9.2 under software OpenGL crashed when two Labels layers were removed before the
    canvas drew once; one removal per frame did not. Layers waiting their turn are marked
    leaving, so that no annotation adopts them meanwhile.
    """
    left = [ly for ly in layers if ly in viewer.layers]
    for layer in left:
        layer.metadata[_LEAVING] = True
    if not left:
        if then is not None:
            then()
        return
    viewer.layers.remove(left[0])
    after_next_draw(viewer, partial(remove_layers, viewer, left[1:], then))


@dataclass(eq=False)
class _Run:
    """A model run streaming into the annotation: its classes, the layers it paints, what it
    added (removed again if it is cancelled) and the regions it touched."""

    classes: list[ClassSpec]
    layers: dict = field(default_factory=dict)
    created: list = field(default_factory=list)
    touched: list = field(default_factory=list)
    queue: list = field(default_factory=list)
    deleted: list = field(default_factory=list)
    painting: bool = False


@dataclass(eq=False)
class Annotation:
    """One image's annotation in the viewer: classes with stable ids, a session per plane, layers.

    sessions: {plane: Session}; plane is the stack index (``()`` for a 2-D image).
    layers: {class id: bound class layer}.
    source: where it was opened from, for saving back in place: ``{"kind": "labels" | "bundle" |
        "session", "path": ...}`` (empty for a run made in the dock).
    on_change: called with (annotation, what) after every change the panels show.
    background: runs (work, then) off the interface's thread; ``None`` runs work here.
    """

    viewer: napari.Viewer
    image: LayerImage
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    sessions: dict = field(default_factory=dict)
    layers: dict = field(default_factory=dict)
    image_ref: Callable | None = None
    source: dict = field(default_factory=dict)
    session_path: object = None
    busy: int = 0
    run: _Run | None = None
    on_change: Callable | None = None
    notify: Callable[[str], None] = print
    background: Callable | None = None
    defer: Callable = next_turn
    pending_deletions: list = field(default_factory=list)
    _naming: bool = False
    _hooks: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ classes and layers

    @property
    def name(self) -> str:
        return self.image.name

    @property
    def image_layer(self):
        return self.image_ref() if self.image_ref is not None else None

    def session(self, plane: tuple[int, ...] = ()) -> Session | None:
        """The plane's session, else any session (all share the class list)."""
        return self.sessions.get(tuple(plane)) or next(iter(self.sessions.values()), None)

    @property
    def classes(self) -> list[tuple[str, ClassSpec]]:
        """(class id, class) in label-value order."""
        session = self.session()
        return list(zip(session.class_ids, session.classes)) if session is not None else []

    def ids_by_name(self, classes: Sequence[ClassSpec]) -> list[str | None]:
        """The id of the class named as each of ``classes`` (in any case), ``None`` for a new name:
        a run or a draft shows its classes in the layers of the classes of the same name."""
        by_name = {spec.name.lower(): i for i, spec in self.classes}
        return [by_name.get(spec.name.lower()) for spec in classes]

    def value_of(self, class_id: str | None) -> int | None:
        """The label value (1-based) of a class id, ``None`` if the class is gone."""
        session = self.session()
        ids = session.class_ids if session is not None else ()
        return ids.index(class_id) + 1 if class_id in ids else None

    def layer_value(self, layer: Layer) -> int | None:
        """The label value of a bound layer's class, ``None`` if it is not bound or its class is gone."""
        return self.value_of(next((i for i, own in self.layers.items() if own is layer), None))

    def ordered_layers(self) -> list[Labels]:
        """The bound layers in class order."""
        return [self.layers[i] for i, _ in self.classes if i in self.layers]

    def owns(self, layer: Layer) -> bool:
        return any(layer is own for own in self.layers.values())

    def current_plane(self) -> tuple[int, ...]:
        ndim = len(self.image.stack_shape)
        return tuple(int(i) for i in self.viewer.dims.current_step[:ndim])

    @property
    def idle(self) -> bool:
        """No run, background step or write in flight: strokes are taken, steps may start."""
        return not self.busy and self.run is None

    def hold_layers(self) -> None:
        """Layers editable exactly while the annotation is :attr:`idle`."""
        for layer in self.layers.values():
            layer.editable = self.idle

    def _hold(self, then: Callable | None = None) -> Callable:
        """Busy (layers read-only) until the returned call, which then calls ``then`` with its
        arguments."""
        self.busy += 1
        self.hold_layers()

        def release(*args):
            self.busy -= 1
            self.hold_layers()
            if then is not None:
                then(*args)

        return release

    def _changed(self, what: str) -> None:
        if self.on_change is not None:
            self.on_change(self, what)

    def add_layer(self, class_id: str, spec: ClassSpec, value: int, data: np.ndarray | None = None) -> Labels:
        """Add and bind the class layer of ``class_id`` (empty unless ``data``)."""
        data = np.zeros(self.image.shape, np.uint8) if data is None else data
        data, kwargs, _ = class_layer_data(data, spec, value, self.base_metadata(), self.image.scale,
                                           self.image.translate)
        kwargs["metadata"].update({ANNOTATION: self.id, CLASS_ID: class_id})
        layer = self.viewer.add_labels(data, **kwargs)
        self.bind(layer, class_id)
        return layer

    def base_metadata(self) -> dict:
        from .layers import base_metadata

        meta = base_metadata(self.image, {})
        session = self.session()
        if session is not None:
            meta.update(model=session.model, parameters=session.parameters)
        return meta

    def bind(self, layer: Labels, class_id: str) -> None:
        """Bind ``layer`` as the class layer of ``class_id``: its strokes, name and Ctrl-Z come here."""
        self.unbind(layer)
        layer.metadata[ANNOTATION], layer.metadata[CLASS_ID] = self.id, class_id
        self.layers[class_id] = layer
        me = weakref.ref(self)

        def on_paint(event):
            annotation = me()
            if annotation is not None and annotation.owns(event.source):
                plane = annotation.current_plane()
                session = annotation.sessions.get(plane)
                shape = session.labels.shape if session is not None else layer.data.shape[-2:]
                region = stroke_region(getattr(event, "value", None), plane, shape)
                annotation.defer(partial(annotation.take_strokes, event.source, plane, region))

        def on_name(event):
            annotation = me()
            if annotation is not None and annotation.owns(event.source):
                annotation.layer_renamed(event.source)

        def step(method, own):
            annotation = me()
            if annotation is None or not annotation.owns(own):
                getattr(own, method)()
            else:
                getattr(annotation, method)(annotation.current_plane())

        def undo(own):  # a function, not a partial: napari 0.9.2 never called a partial bound to Ctrl-Z
            step("undo", own)

        def redo(own):
            step("redo", own)

        layer.events.paint.connect(on_paint)
        layer.events.name.connect(on_name)
        self._hooks[id(layer)] = (on_paint, on_name)
        layer.bind_key(_UNDO, undo, overwrite=True)
        layer.bind_key(_REDO, redo, overwrite=True)
        layer.selected_label = STROKE
        layer.editable = self.idle

    def unbind(self, layer: Labels) -> str | None:
        """Forget ``layer`` (it keeps its data); returns its class id."""
        hooks = self._hooks.pop(id(layer), None)
        if hooks is not None:
            layer.events.paint.disconnect(hooks[0])
            layer.events.name.disconnect(hooks[1])
        for class_id, own in list(self.layers.items()):
            if own is layer:
                del self.layers[class_id]
                return class_id
        return None

    def match_layers(self, then: Callable[[], None] | None = None) -> list[Labels]:
        """One bound layer per class, named and coloured after it; layers of classes that are gone
        are removed (one per frame). Returns the layers added. Writes nothing."""
        added = []
        self._naming = True
        try:
            for value, (class_id, spec) in enumerate(self.classes, start=1):
                layer = self.layers.get(class_id)
                if layer is None or layer not in self.viewer.layers:
                    added.append(self.add_layer(class_id, spec, value))
                    continue
                if layer.name != spec.name:
                    layer.name = spec.name
                _, kwargs, _ = class_layer_data(None, spec, value, self.base_metadata())
                if tuple(layer.metadata.get("color") or ()) != spec.color:
                    layer.colormap = kwargs["colormap"]
                layer.metadata.update(kwargs["metadata"], **{ANNOTATION: self.id, CLASS_ID: class_id})
        finally:
            self._naming = False
        wanted = {i for i, _ in self.classes}
        gone = [self.layers.pop(i) for i in list(self.layers) if i not in wanted]
        remove_layers(self.viewer, gone, then)
        return added

    # ------------------------------------------------------------------ strokes

    def read_strokes(self, layer: Labels, plane: tuple[int, ...], region: Region | None = None):
        """What the annotator changed in ``layer`` since the session last wrote it: (region,
        new labels, painted, released), or ``None`` if nothing changed."""
        session, value = self.sessions.get(tuple(plane)), self.layer_value(layer)
        if session is None or value is None:
            return None
        height, width = session.labels.shape
        y0, y1, x0, x1 = region or (0, height, 0, width)
        current = np.asarray(layer.data[(*plane, slice(y0, y1), slice(x0, x1))])
        found = class_view_edits(current, session.labels[y0:y1, x0:x1], session.edited[y0:y1, x0:x1], value)
        return None if found is None else ((y0, y1, x0, x1), *found)

    def take_strokes(self, layer: Labels, plane: tuple[int, ...] = (), region: Region | None = None) -> int:
        """Take a stroke from ``layer`` into the plane's session (one undo step) and show it in every
        layer; returns the number of pixels painted (0 while not :attr:`idle`)."""
        n = self._take(layer, plane, region) if self.idle else None
        if n is not None:
            self._changed("paint")
        return n or 0

    def _take(self, layer: Labels, plane: tuple[int, ...], region: Region | None) -> int | None:
        """:meth:`take_strokes` at any time; ``None`` if the layer showed the session's map."""
        found = self.read_strokes(layer, plane, region)
        if found is None:
            return None
        box, new, painted, released = found
        n = self.sessions[tuple(plane)].edit(new, painted, released, region=box)
        self.write(plane, box)
        return n

    def sync_soon(self, plane: tuple[int, ...], then: Callable[[], None]) -> bool:
        """Take every layer's changes a band of rows per turn (read-only meanwhile), then ``then()``.
        ``False`` if the annotation is not idle."""
        session = self.sessions.get(tuple(plane))
        if session is None or not self.idle:
            return False
        height, width = session.labels.shape

        def band(y0: int, y1: int):
            for layer in self.ordered_layers():
                self._take(layer, plane, (y0, y1, 0, width))

        in_turns((partial(band, *b) for b in row_bands(height, width)), self._hold(then), self.defer)
        return True

    # ------------------------------------------------------------------ session -> layers

    def write(self, plane: tuple[int, ...] = (), region: Region | None = None, *, refresh: bool = True) -> list[int]:
        """Show the plane's map over ``region`` in every layer (only pixels that differ); the
        pixels changed per layer, in class order."""
        session = self.sessions[tuple(plane)]
        height, width = session.labels.shape
        y0, y1, x0, x1 = region or (0, height, 0, width)
        labels, edited = session.labels[y0:y1, x0:x1], session.edited[y0:y1, x0:x1]
        changed = []
        for value, (class_id, _) in enumerate(self.classes, start=1):
            layer = self.layers.get(class_id)
            n = 0
            if layer is not None and layer in self.viewer.layers:
                n = write_into_layer(layer, class_view(labels, edited, value), tuple(plane), (y0, y1, x0, x1),
                                     refresh=refresh)
            changed.append(n)
        return changed

    def show(self, plane: tuple[int, ...] | None = None, changed: np.ndarray | None = None,
             then: Callable[[], None] | None = None) -> None:
        """Show the map in the layers a band of rows per turn (only the rows holding ``changed``
        flat pixel indices, when given; every plane when ``plane`` is None), then ``then()``.
        A change of more than 1/:data:`DENSE_SHARE` of the pixels (or an unknown one) is written
        straight into the arrays and each layer that changed is refreshed once."""
        planes = list(self.sessions) if plane is None else [tuple(plane)]
        pieces = []
        for p in planes:
            height, width = self.sessions[p].labels.shape
            y0, y1 = 0, height
            if changed is not None:
                y0, y1 = ((int(changed.min()) // width, int(changed.max()) // width + 1) if len(changed) else (0, 0))
            dense = changed is None or len(changed) * DENSE_SHARE > height * width
            counts: list[int] = []
            pieces += [partial(self._write_band, p, b, counts, not dense) for b in row_bands(height, width, y0, y1)]
            if dense:
                pieces.append(partial(self._refresh_changed, counts))
        in_turns(pieces, self._hold(then), self.defer)

    def _write_band(self, plane, band, counts: list[int], refresh: bool) -> None:
        written = self.write(plane, (band[0], band[1], 0, self.sessions[plane].labels.shape[1]), refresh=refresh)
        counts[:] = [a + b for a, b in zip(counts, written)] if counts else written

    def _refresh_changed(self, counts: list[int]) -> None:
        for layer, n in zip(self.ordered_layers(), counts):
            if n:
                layer.refresh()

    # ------------------------------------------------------------------ undo and class changes

    def in_background(self, work: Callable, then: Callable) -> None:
        """Run ``work`` off the interface's thread (when :attr:`background` is set), busy
        meanwhile: no stroke is taken and no step starts until ``then(result)`` has run."""
        if self.background is None:
            then(work())
        else:
            self.background(work, self._hold(then))

    def _step(self, plane: tuple[int, ...], method: str) -> bool:
        """Undo or redo the plane's last step in every layer; a class change made on every plane
        of a stack is undone on every plane. ``False`` (and one line) if there is none."""
        from ..session import steps_together

        session = self.sessions.get(tuple(plane))
        if session is None or not self.idle:
            return False
        try:
            sessions = steps_together(session, self.sessions.values(), method)
        except BadInputError as e:
            self.notify(str(e))
            return False
        step = (session.history if method == "undo" else session.future)[-1]
        classes_change = step.classes_before != step.classes_after or step.ids_before != step.ids_after

        def work():
            for s in sessions:
                getattr(s, method)()

        def done(_=None):
            if classes_change:
                self.match_layers()
                self._changed("classes")
            self.show(None if len(sessions) > 1 else tuple(plane), None if len(sessions) > 1 else step.changed,
                      partial(self._changed, method))

        self.in_background(work, done)
        return True

    def undo(self, plane: tuple[int, ...] = ()) -> bool:
        """Undo the plane's last step in every layer at once."""
        return self._step(plane, "undo")

    def redo(self, plane: tuple[int, ...] = ()) -> bool:
        """Redo the plane's last undone step in every layer at once."""
        return self._step(plane, "redo")

    def change_classes(self, change: Callable[[Session, object], object]) -> None:
        """Apply ``change(session, group)`` to every plane's session (one step each, undone
        together), then bring the layers in line and show the map."""
        group = object()
        for session in self.sessions.values():
            change(session, group)
        self.match_layers()
        self._changed("classes")
        self.show()

    def layer_removed(self, layer: Labels) -> None:
        """The annotator deleted a bound class layer: its class is deleted at the next turn (layers
        deleted together are one step); during a run, the run's result brings it back."""
        class_id = self.unbind(layer)
        if class_id is None:
            return
        if self.run is not None:
            self.run.deleted.append(layer.name)
            return
        self.pending_deletions.append((class_id, layer.name))
        if len(self.pending_deletions) == 1:
            self.defer(self._delete_pending)

    def _delete_pending(self) -> None:
        if not self.idle:
            self.defer(self._delete_pending, 100)
            return
        pending, self.pending_deletions = self.pending_deletions, []
        ids = [self.session().class_ids.index(i) for i, _ in pending if self.value_of(i) is not None]
        if not ids:
            return
        names = ", ".join(repr(name) for _, name in pending)
        try:
            self.change_classes(lambda session, group: session.delete_classes(ids, group))
        except BadInputError as e:  # the class stays: its layer comes back with its pixels
            self.match_layers()
            self.show()
            self.notify(f"kept {names}: {e}")
            return
        self.notify(f"deleted the class {names}: its pixels are unlabelled now (Undo or Ctrl-Z brings it back)"
                    if len(pending) == 1 else f"deleted the classes {names}: their pixels are unlabelled now "
                    "(Undo or Ctrl-Z brings them back)")

    def layer_renamed(self, layer: Labels) -> None:
        """A bound layer was renamed in the layer list: its class takes the name (one step)."""
        value = self.layer_value(layer)
        if self._naming or value is None:
            return
        old, new = self.classes[value - 1][1].name, layer.name.strip()
        if new == old:
            return
        if not self.idle:  # napari keeps names unique and non-empty; a step in flight cannot wait
            self._naming = True
            layer.name = old
            self._naming = False
            self.notify(f"kept the name {old!r}: the annotation is busy, rename it again in a moment")
            return
        self.change_classes(lambda session, group: session.rename_class(value - 1, new, group=group))

    # ------------------------------------------------------------------ a run streaming in

    def start_run(self, classes: Sequence[ClassSpec]) -> None:
        """A run of ``classes`` starts: its rows are painted as they come (:meth:`show_rows`) into
        the layers of the classes of the same name, or into layers added for it."""
        self.run = _Run(list(classes))
        for k, class_id in enumerate(self.ids_by_name(classes), start=1):
            if class_id in self.layers:
                self.run.layers[k] = self.layers[class_id]
        self.hold_layers()

    def show_rows(self, plane: tuple[int, ...], region: Region, labels: np.ndarray) -> None:
        """Paint a region the run finished (or drafted) into its layers, a few bands per turn;
        the layers it lacks are added first, together."""
        run = self.run
        if run is None:
            return
        for k, spec in enumerate(run.classes, start=1):
            if k not in run.layers:
                layer = self.add_layer(f"run-{uuid.uuid4().hex[:8]}", spec, k)
                run.layers[k] = layer
                run.created.append(layer)
        run.touched.append((tuple(plane), region))
        y0, y1, x0, x1 = region
        for start, stop in row_bands(y1, x1 - x0, y0, y1):
            band = labels[start - y0:stop - y0]
            run.queue += [partial(self._paint_band, tuple(plane), (start, stop, x0, x1), band, k)
                          for k in run.layers]
        if not run.painting:
            run.painting = True
            in_turns(self._queued(run), partial(setattr, run, "painting", False), self.defer)

    @staticmethod
    def _queued(run: _Run):
        while run.queue:
            yield run.queue.pop(0)

    def _paint_band(self, plane, region, labels, k) -> None:
        run = self.run
        layer = run.layers.get(k) if run is not None else None
        if layer is not None and layer in self.viewer.layers:
            write_into_layer(layer, class_view(labels, None, k), plane, region)

    def finish_run(self, results: dict, image_info: Callable[[tuple], dict]) -> dict:
        """The run's ``results`` ({plane: result}) become the sessions (one undo step on a plane
        that had one) and the layers show them. Returns what changed: ``added`` layers,
        ``replaced`` (classes whose strokes the run replaced) and ``deleted`` (layers deleted
        during the run, brought back)."""
        from ..session import Session

        run, self.run = self.run, None
        first = next(iter(results.values()))
        ids = [class_id or new_class_id() for class_id in self.ids_by_name(first.classes)]
        replaced, group = set(), object()
        for plane, result in results.items():
            session = self.sessions.get(plane)
            if session is None:
                self.sessions[plane] = Session.from_result(result, image_info(plane), prepare=False, class_ids=ids)
                continue
            painted = np.unique(session.labels[np.asarray(session.edited)])
            replaced |= {spec.name for k, spec in enumerate(session.classes, start=1) if k in painted}
            session.replace_run(result, ids, group)
        created = list(run.created) if run is not None else []
        for k, layer in (run.layers.items() if run is not None else ()):
            if layer in created and self.owns(layer):  # the layer the run added takes its class's id
                self.layers.pop(layer.metadata[CLASS_ID])
                self.layers[ids[k - 1]] = layer
                layer.metadata[CLASS_ID] = ids[k - 1]
        added = [ly for ly in created if ly in self.viewer.layers]
        added += self.match_layers()
        self.hold_layers()
        self.show()
        return {"added": added, "replaced": sorted(replaced), "deleted": list(run.deleted) if run else []}

    def cancel_run(self, then: Callable[[], None] | None = None) -> None:
        """The run was cancelled or failed: the layers it added go, the others show their session
        again, so the viewer is as it was."""
        run, self.run = self.run, None
        if run is None:
            return
        run.queue.clear()
        for layer in run.created:
            self.unbind(layer)
        for plane, region in run.touched:
            if plane in self.sessions:
                self.write(plane, region)
        self.hold_layers()
        remove_layers(self.viewer, run.created, then)


@dataclass(eq=False)
class AnnotatorState:
    """What the dock's panels share for one viewer: the loaded model and the annotations.

    ``synchronous`` runs the dock's workers on the interface's thread (tests whose point is not
    the thread).
    """

    model: SDModel | None = None
    model_key: tuple | None = None
    annotations: dict = field(default_factory=dict)
    synchronous: bool = False
    on_change: Callable | None = None
    notify: Callable[[str], None] = print
    background: Callable | None = None

    def set_model(self, model, key: tuple) -> None:
        """Keep one model: the previous one is dropped (and its memory given back)."""
        if self.model is not None and self.model is not model:
            import gc

            from ..model.loading import clear_model_cache

            self.model = None
            clear_model_cache()
            gc.unfreeze()  # what the previous load froze may hold cycles of the dropped model
        self.model, self.model_key = model, key

    def annotation_of(self, layer: Layer | None) -> Annotation | None:
        """The annotation a bound class layer belongs to, or the one of an image layer."""
        if layer is None:
            return None
        annotation = self.annotations.get(layer.metadata.get(ANNOTATION))
        if annotation is not None and (annotation.owns(layer) or annotation.image_layer is layer):
            return annotation
        return next((a for a in self.annotations.values() if a.image_layer is layer), None)

    def add(self, annotation: Annotation) -> Annotation:
        """Keep ``annotation``, wired to the panels (changes, messages, background work)."""
        annotation.on_change, annotation.notify = self.on_change, self.notify
        annotation.background = self.background
        self.annotations[annotation.id] = annotation
        return annotation

    def forget(self, annotation: Annotation) -> None:
        """Drop an annotation (its layers are gone or were never shown); nothing of it is pending."""
        annotation.pending_deletions.clear()
        self.annotations.pop(annotation.id, None)

    def close(self) -> None:
        """The dock is gone: nothing reports to its panels any more (napari removes the layers
        of a closing window; that deletes no class)."""
        self.on_change = self.background = None
        for annotation in self.annotations.values():
            annotation.on_change = annotation.background = None
            annotation.notify = lambda _message: None
            annotation.pending_deletions.clear()
        self.annotations.clear()

    def layer_removed(self, layer: Layer) -> None:
        """A layer left the viewer: a bound class layer's class is deleted; an annotation with
        neither layers nor image is forgotten."""
        annotation = self.annotations.get(layer.metadata.get(ANNOTATION))
        if annotation is not None and annotation.owns(layer):
            annotation.layer_removed(layer)
        for a in list(self.annotations.values()):
            image = a.image_layer
            if not a.layers and a.run is None and (image is None or image not in a.viewer.layers):
                self.forget(a)

    def adopt(self, viewer: napari.Viewer, arrived: Sequence[Layer]) -> list[Annotation]:
        """Bind the class layers among ``arrived`` (layers just inserted) that no annotation holds:
        our reader gives each file's layers one annotation id; other class layers (a split, say)
        are grouped by image and shape. Returns the new annotations."""
        groups: dict[str, list] = {}
        for layer in arrived:
            if (layer not in viewer.layers or layer.metadata.get("kind") != CLASS or layer.metadata.get(_LEAVING)
                    or self.annotation_of(layer)):
                continue
            key = layer.metadata.get(ANNOTATION)
            if not key or key in self.annotations:
                key = f"{layer.metadata.get('image', layer.name)}|{tuple(layer.data.shape)}"
                layer.metadata[ANNOTATION] = None
            groups.setdefault(str(key), []).append(layer)
        found = [self.add(_from_layers(viewer, layers)) for layers in groups.values()]
        for annotation in found:
            annotation.show()
        return found


def _from_layers(viewer: napari.Viewer, layers: list) -> Annotation:
    """An annotation of class layers opened from a file: a session bundle's session when their
    metadata names one, else a session made from the layers (value 2 = painted)."""
    from ..session import Session
    from ..session_bundle import load_session

    layers = sorted(layers, key=lambda ly: ly.metadata.get("value", 0))
    meta = layers[0].metadata
    aid = meta.get(ANNOTATION) or uuid.uuid4().hex[:12]
    image_layer = next((ly for ly in viewer.layers if ly.metadata.get("kind") is None and hasattr(ly, "rgb")
                        and ly.metadata.get(ANNOTATION) == aid), None)
    if image_layer is None:
        image_layer = next((ly for ly in viewer.layers if hasattr(ly, "rgb") and ly.name == meta.get("image")), None)
    if image_layer is not None:
        image = describe_image(image_layer)
    else:
        image = LayerImage(meta.get("image") or layers[0].name, tuple(layers[0].data.shape), None, ("gray",),
                           tuple(layers[0].scale), tuple(layers[0].translate), meta.get("georeference"))
    annotation = Annotation(viewer, image, aid, image_ref=weakref.ref(image_layer) if image_layer else None,
                            source=dict(meta.get("source_file") or {}))
    if meta.get("session"):
        session = load_session(meta["session"])
        annotation.session_path = meta["session"]
    else:
        session = Session.from_class_maps(
            [ly.data for ly in layers], [layer_class(ly) for ly in layers],
            [ly.metadata.get(CLASS_ID) for ly in layers],
            image={"layer": image.name, "georeference": image.georeference},
            parameters=dict(meta.get("parameters") or {}), model=str(meta.get("model") or ""))
    annotation.sessions[()] = session
    for layer, class_id in zip(layers, session.class_ids):
        annotation.bind(layer, class_id)
    return annotation

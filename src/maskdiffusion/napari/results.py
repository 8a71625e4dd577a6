"""A finished run into the viewer, in pieces: new class layers, or the run's existing layers
updated through their sessions (one undo step per plane, for all layers at once).

:func:`apply_results` is a generator: each ``next`` does one piece of work small enough for one
turn of the event loop (adding one layer hidden, showing it, writing one band of rows), so the
dock never freezes for the whole of it: napari's insertion of a layer takes ~100 ms and the
upload of its texture at the redraw after it is shown 110–180 ms at 6000². A piece that yields
True (a layer shown) ends its turn. It returns an :class:`Applied` summary. Qt-free.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .images import LayerImage
from .layers import CLASS, DRAFT, SEMANTIC, result_layer_data, write_into_layer
from .state import BAND_PIXELS, AnnotatorState, ImageRun

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

__all__ = ["Applied", "apply_results"]


@dataclass
class Applied:
    """What a run changed in the viewer."""

    run: ImageRun
    added: list = field(default_factory=list)
    updated: list = field(default_factory=list)
    replaced_edits: list = field(default_factory=list)


def _matches(run: ImageRun | None, classes, shape, viewer) -> bool:
    return (run is not None and [c.name for c in run.classes] == [c.name for c in classes]
            and all(ly in viewer.layers for ly in run.layers) and len(run.layers) == len(classes)
            and tuple(run.layers[0].data.shape) == tuple(shape))


def _session_info(image: LayerImage, image_layer, plane) -> dict:
    source = getattr(getattr(image_layer, "source", None), "path", None) or image_layer.metadata.get("source")
    return {"layer": image.name, "path": str(source) if source else None, "georeference": image.georeference,
            "plane": list(plane), "shape": list(image.shape[-2:])}


def apply_results(viewer: napari.Viewer, state: AnnotatorState, image_layer: Image, image: LayerImage,
                  results: Mapping[tuple[int, ...], object], *, semantic: bool = False, confidence: bool = False,
                  current_plane: Callable[[], tuple[int, ...]] = tuple,
                  streamed: list | None = None) -> Generator[bool | None, None, Applied]:
    """Put a run's ``results`` ({plane: result}) into the viewer, one piece per ``next``.

    ``streamed`` are class layers the run already painted while it ran (:mod:`.live_labels`),
    in class order: they are taken as the run's layers and given its final labels.
    """
    from ..session import Session

    first = next(iter(results.values()))
    run = state.runs.get(image_layer)
    if _matches(run, first.classes, image.shape, viewer):
        applied = Applied(run)
        for plane, result in results.items():
            session = run.sessions.get(plane)
            if session is None:
                run.sessions[plane] = Session.from_result(result, _session_info(image, image_layer, plane),
                                                          prepare=False)
            else:
                painted = set(np.unique(session.labels[np.asarray(session.edited)]).tolist())
                applied.replaced_edits += [c.name for k, c in enumerate(session.classes, start=1) if k in painted]
                session.replace_run(result)
            height, width = image.shape[-2:]
            rows = max(1, BAND_PIXELS // max(width, 1))
            for y0 in range(0, height, rows):
                for k in range(len(run.all_layers)):
                    run.write(plane, (y0, min(height, y0 + rows), 0, width), only=k)
                    yield
        applied.updated = list(run.all_layers)
        applied.replaced_edits = sorted(set(applied.replaced_edits))
        return applied

    sessions = {plane: Session.from_result(result, _session_info(image, image_layer, plane), prepare=False)
                for plane, result in results.items()}
    run = ImageRun(image, sessions=sessions)
    applied = Applied(run)
    streamed = list(streamed or [])
    height, width = image.shape[-2:]
    rows = max(1, BAND_PIXELS // max(width, 1))
    for k, (data, kwargs, layer_type) in enumerate(
            result_layer_data(image, results, semantic=semantic, confidence=confidence, existing=len(streamed)),
            start=1):
        kind = kwargs["metadata"].get("kind")
        if data is None:
            layer = streamed.pop(0)
            layer.metadata = kwargs["metadata"]
            for plane, result in results.items():
                for y0 in range(0, height, rows):
                    y1 = min(height, y0 + rows)
                    values = np.where(result.labels[y0:y1] == k, np.uint8(DRAFT), np.uint8(0))
                    write_into_layer(layer, values, tuple(plane), (y0, y1, 0, width))
                    yield
        else:
            layer = getattr(viewer, f"add_{layer_type}")(data, visible=False, **kwargs)
            yield
            layer.visible = True
            yield True
        applied.added.append(layer)
        if kind == CLASS:
            run.layers.append(layer)
        elif kind == SEMANTIC:
            run.semantic = layer
        yield
    for layer in run.all_layers:
        run.bind(layer, current_plane)
    state.runs[image_layer] = run
    return applied

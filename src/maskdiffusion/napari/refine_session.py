"""Refinement sessions in napari: the registry of open sessions and the session-bundle reader.

Qt-free. A :class:`~maskdiffusion.session.Session` belongs to one image plane and is kept here,
keyed by the image layer's name and the plane index (class layers name their image in
``metadata["image"]``). The annotator widget puts its runs here with
:func:`remember_results` (the run must keep its features); the reader puts the sessions of
the bundles it opens; the refine widget takes them with :func:`session_for`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..session import SUFFIX, Session, is_session, load_session
from . import layers as L

__all__ = ["forget", "get_session_reader", "has_session", "read_session", "register", "remember_results",
           "session_for", "session_layer_data"]

_SESSIONS: dict[tuple[str, tuple[int, ...]], Session] = {}
_PENDING: dict[tuple[str, tuple[int, ...]], tuple] = {}


def _key(image: str, plane=()) -> tuple[str, tuple[int, ...]]:
    return str(image), tuple(int(i) for i in plane)


def remember_results(image, results: Mapping[tuple[int, ...], object], source: str | None = None) -> None:
    """Keep a run's results (made with ``keep_features=True``) for refinement.

    ``image`` is the image layer's name or its :class:`~maskdiffusion.napari.layers.LayerImage`.
    The cache is built on first use (:func:`session_for`), off the run's critical path.
    Results without features are skipped.
    """
    name = image if isinstance(image, str) else image.name
    georeference = None if isinstance(image, str) else image.georeference
    for plane, result in results.items():
        if getattr(result, "features", None) is None:
            continue
        key = _key(name, plane)
        _SESSIONS.pop(key, None)
        info = {"layer": name, "path": source, "georeference": georeference, "plane": list(key[1]),
                "shape": list(result.labels.shape)}
        _PENDING[key] = (result, info)


def register(image: str, session: Session, plane=()) -> None:
    """Make ``session`` the one of ``image`` (layer name) and ``plane``."""
    key = _key(image, plane)
    _PENDING.pop(key, None)
    _SESSIONS[key] = session


def has_session(image: str, plane=()) -> bool:
    key = _key(image, plane)
    return key in _SESSIONS or key in _PENDING


def session_for(image: str, plane=(), dims="auto", build: bool = True) -> Session | None:
    """The session of an image plane, building its cache from a remembered run if needed
    (``build=False`` gives only a session already built)."""
    key = _key(image, plane)
    if build and key not in _SESSIONS and key in _PENDING:
        result, info = _PENDING.pop(key)
        _SESSIONS[key] = Session.from_result(result, image=info, dims=dims)
    return _SESSIONS.get(key)


def forget(image: str | None = None) -> None:
    """Drop the sessions of ``image`` (all when ``None``)."""
    for store in (_SESSIONS, _PENDING):
        for key in [k for k in store if image is None or k[0] == image]:
            del store[key]


# --------------------------------------------------------------------------- layers of a session


def session_layer_data(session: Session, image_name: str, scale=(1.0, 1.0), translate=(0.0, 0.0)) -> list[tuple]:
    """One binary class layer per class of ``session`` (layer-data tuples), as the annotator makes them."""
    base = {"software": L.SOFTWARE, "image": image_name, "model": session.model, "parameters": session.parameters}
    if session.image.get("georeference"):
        base["georeference"] = session.image["georeference"]
    out = []
    for k, spec in enumerate(session.classes):
        kwargs = {"name": spec.name, "colormap": L.class_colormap(spec.color), "opacity": 0.6,
                  "metadata": L.class_metadata(base, spec, k), "scale": tuple(scale), "translate": tuple(translate)}
        out.append(((session.labels == k).astype(np.uint8), kwargs, "labels"))
    return out


def _bundle(path) -> Path | None:
    p = Path(path)
    if p.name == "session.json":
        p = p.parent
    return p if p.suffix == SUFFIX and is_session(p) else None


def get_session_reader(path):
    """npe2 reader: :func:`read_session` for a ``.mdsession`` folder (or its ``session.json``)."""
    if isinstance(path, (list, tuple)):
        return read_session if path and all(_bundle(p) for p in path) else None
    return read_session if _bundle(path) else None


def read_session(path) -> list[tuple]:
    """Open a session bundle: its image (when the file is still there) and its class layers.

    The session is registered for the refine widget, which continues where it was saved.
    """
    if isinstance(path, (list, tuple)):
        return [t for p in path for t in read_session(p)]
    folder = _bundle(path) or Path(path)
    session = load_session(folder)
    name = session.image.get("layer") or folder.stem
    out = []
    source = session.image.get("path")
    if source and Path(source).is_file():
        from ..geo.raster_io import read_image
        from .reader import image_layer_data

        image, geo = read_image(source)
        layers = image_layer_data(image, geo, name)
        out.extend(layers[:1] if len(layers) == 1 else layers)
    register(name, session, session.image.get("plane") or ())
    out.extend(session_layer_data(session, name))
    return out

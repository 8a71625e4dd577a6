"""A session bundle as layers: its image (when the file is still there) and its class layers.

Every layer carries ``metadata["session"]`` (the bundle folder), by which the dock takes the
layers in and continues the session where it was saved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..session_bundle import SUFFIX, load_session
from .layers import SOFTWARE, class_layer_data

__all__ = ["read_session"]


def _folder(path) -> Path:
    p = Path(path)
    return p.parent if p.name == "session.json" else p if p.suffix == SUFFIX else p.with_name(p.name + SUFFIX)


def read_session(path) -> list[tuple]:
    """Layer tuples of a ``.mdsession`` bundle (or its ``session.json``)."""
    folder = _folder(path).resolve()
    session = load_session(folder)
    name = session.image.get("layer") or folder.stem
    out = []
    source = session.image.get("path")
    if source and Path(source).is_file():
        from ..geo.raster_io import read_image
        from .images import image_layer_data

        image, geo = read_image(source)
        for data, kwargs, kind in image_layer_data(image, geo, name):
            kwargs["metadata"] = {**kwargs.get("metadata", {}), "session": str(folder)}
            out.append((data, kwargs, kind))
    base = {"software": SOFTWARE, "image": name, "model": session.model, "parameters": session.parameters,
            "session": str(folder)}
    if session.image.get("georeference"):
        base["georeference"] = session.image["georeference"]
    labels = np.asarray(session.labels)
    out += [class_layer_data((labels == k).astype(np.uint8), spec, k, base)
            for k, spec in enumerate(session.classes, start=1)]
    return out

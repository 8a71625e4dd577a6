"""Image layers as the engine sees them: shape, bands, planes of a stack, georeference.

Georeference comes from the layer's metadata (our reader and samples put it there) or, for a
layer napari's own reader opened, from the file it came from (``layer.source.path``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from napari.layers import Image, Layer

__all__ = ["LayerImage", "current_plane", "describe_image", "georeference", "image_layer_data", "level0", "read_plane",
           "source_path"]

_BAND_AXIS_LABELS = {"band", "bands", "channel", "channels", "c"}


@dataclass(frozen=True)
class LayerImage:
    """How an image layer maps onto the engine's (H, W[, bands]) planes and the label layers.

    band_axis: data axis holding the bands (the last one of an RGB layer), or ``None`` (gray).
    shape: the label layers' shape: the data's shape without the band axis; its last two
        axes are (H, W), any before them are a stack of planes.
    scale, translate: those of the label axes.
    path: the file the image was read from, if known (sidecars name it relative to themselves).
    """

    name: str
    shape: tuple[int, ...]
    band_axis: int | None
    band_names: tuple[str, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    georeference: dict | None = None
    path: str | None = None

    @property
    def n_bands(self) -> int:
        return len(self.band_names)

    @property
    def stack_shape(self) -> tuple[int, ...]:
        return self.shape[:-2]

    @property
    def n_planes(self) -> int:
        return int(np.prod(self.stack_shape, dtype=int))

    def planes(self, current: Sequence[int] | None = None) -> list[tuple[int, ...]]:
        """All plane indices, or just ``current`` (a stack index) when given."""
        if current is not None:
            return [tuple(int(i) for i in current)]
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*self.stack_shape)]

    def default_bands(self) -> tuple[int, ...]:
        """R, G, B by name when the bands are named so, else the first three (or the one band)."""
        if self.n_bands <= 1:
            return ()
        upper = [n.upper() for n in self.band_names]
        if all(c in upper for c in "RGB"):
            return tuple(upper.index(c) for c in "RGB")
        return tuple(min(i, self.n_bands - 1) for i in range(3))


def level0(layer: Layer):
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def _band_axis(layer: Image, ndim: int) -> int | None:
    if getattr(layer, "rgb", False):
        return ndim - 1
    axis = layer.metadata.get("band_axis")
    if axis is not None:
        return int(axis) % ndim
    labels = [str(a).lower() for a in getattr(layer, "axis_labels", ())]
    hits = [i for i, a in enumerate(labels) if a in _BAND_AXIS_LABELS]
    if hits and ndim >= 3 and hits[0] < ndim - 2:
        return hits[0]
    return None


def describe_image(layer: Image) -> LayerImage:
    """Read the shape, bands, scale and georeference of an image layer (no pixels are read)."""
    data = level0(layer)
    ndim = len(data.shape)
    band_axis = _band_axis(layer, ndim)
    shape = tuple(int(n) for i, n in enumerate(data.shape) if i != band_axis)
    if len(shape) < 2:
        raise ValueError(f"image layer {layer.name!r} has no (H, W) plane (shape {tuple(data.shape)})")
    n_bands = int(data.shape[band_axis]) if band_axis is not None else 1
    names = tuple(layer.metadata.get("band_names") or ())
    if len(names) != n_bands:
        names = ("R", "G", "B", "A")[:n_bands] if layer.rgb else tuple(f"band {i + 1}" for i in range(n_bands))
    keep = [i for i in range(len(layer.scale)) if i != band_axis]  # an RGB layer's scale has no band axis
    scale = tuple(float(layer.scale[i]) for i in keep)
    translate = tuple(float(layer.translate[i]) for i in keep)
    return LayerImage(layer.name, shape, band_axis, names, scale, translate, georeference(layer), source_path(layer))


def source_path(layer: Layer) -> str | None:
    """The file a layer was read from: napari's record of it, else our reader's metadata."""
    path = getattr(getattr(layer, "source", None), "path", None) or layer.metadata.get("source")
    return str(path) if path else None


def current_plane(layer: Image, image: LayerImage, world_point: Sequence[float]) -> tuple[int, ...]:
    """The stack index of the plane the viewer shows for this layer at ``world_point``."""
    if not image.stack_shape:
        return ()
    coords = list(layer.world_to_data(world_point))
    if image.band_axis is not None and not layer.rgb:
        del coords[image.band_axis]
    return tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(coords, image.stack_shape))


def read_plane(layer: Image, image: LayerImage, plane: Sequence[int] = ()) -> np.ndarray:
    """One (H, W) or (H, W, bands) plane of an image layer as a numpy array."""
    data = level0(layer)
    ndim = len(data.shape)
    keep = {image.band_axis, *[a for a in range(ndim) if a != image.band_axis][-2:]} - {None}
    stack = iter(plane)
    index = tuple(slice(None) if axis in keep else next(stack) for axis in range(ndim))
    arr = np.asarray(data[index])
    if image.band_axis is not None:
        arr = np.moveaxis(arr, sorted(keep).index(image.band_axis), -1)
    return arr


def georeference(layer: Layer) -> dict | None:
    """The layer's georeference: its metadata's, else read from its source file (``None`` if none)."""
    geo = layer.metadata.get("georeference")
    if geo:
        return dict(geo)
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        return None
    from ..errors import BadInputError
    from ..geo.raster_io import image_info

    try:
        info = image_info(path)
    except BadInputError:
        return None
    geo = info.geo.to_dict()
    return geo if geo.get("transform") is not None or geo.get("crs") else None


def image_layer_data(image: np.ndarray, geo=None, name: str = "image", metadata: dict | None = None) -> list[tuple]:
    """Image layer tuples for an (H, W) or (H, W, bands) array read from a raster.

    Gray and RGB(A) give one layer; other band counts the band stack (bands first, with
    ``band_axis`` and ``band_names`` in its metadata) and an RGB view of three of its bands.
    """
    meta = dict(metadata or {})
    if geo is not None:
        if geo.transform is not None or geo.crs:
            meta["georeference"] = geo.to_dict()
        if geo.source:
            meta.setdefault("source", geo.source)
    n = 1 if image.ndim == 2 else image.shape[2]
    names = list(geo.band_names) if geo is not None and geo.band_names and len(geo.band_names) == n else None
    limits = _display_limits(image)
    if n == 1:
        return [(image if image.ndim == 2 else image[..., 0], {"name": name, "metadata": meta, **limits}, "image")]
    if n == 3 or (n == 4 and (names is None or [s.upper() for s in names] == ["R", "G", "B", "A"])):
        meta["band_names"] = names or ["R", "G", "B", "A"][:n]
        return [(image, {"name": name, "rgb": True, "metadata": meta, **limits}, "image")]
    names = names or [f"band {i + 1}" for i in range(n)]
    stack = np.moveaxis(image, -1, 0)
    stack_meta = {**meta, "band_axis": 0, "band_names": names}
    bands = LayerImage(name, image.shape[:2], 0, tuple(names), (1.0, 1.0), (0.0, 0.0)).default_bands()
    view = np.ascontiguousarray(image[..., list(bands)])
    view_meta = {**meta, "band_names": [names[b] for b in bands]}
    return [
        (stack, {"name": name, "metadata": stack_meta, "axis_labels": ("band", "y", "x"), "visible": False,
                 **limits}, "image"),
        (view, {"name": f"{name} ({''.join(names[b] for b in bands)})", "rgb": True, "metadata": view_meta,
                **limits}, "image"),
    ]


def _display_limits(image: np.ndarray) -> dict:
    """Contrast limits that show uint16 and float imagery (uint8 keeps napari's default)."""
    if image.dtype == np.uint8 or image.size == 0:
        return {}
    sample = image[:: max(1, image.shape[0] // 512), :: max(1, image.shape[1] // 512)]
    lo, hi = np.nanpercentile(sample, (1, 99)).astype(float)
    return {"contrast_limits": (lo, hi if hi > lo else lo + 1)}

"""Segmentations as napari layers and back: the one place that knows how a result looks in napari.

- A **class layer** is a binary Labels layer (1 = the class) named after the class and drawn in
  its colour, with the image layer's scale and translate.
- A **semantic map** is one Labels layer where value ``i + 1`` is class ``i`` and 0 is
  unlabelled (napari's background).
- Layers carry ``metadata`` (``kind``, ``class``, ``prompt``, ``image``, ``model``,
  ``parameters``, ``georeference``...), so runs, merges, splits and exports find them again.

Everything returns napari layer-data tuples ``(data, kwargs, layer_type)`` except
:func:`apply_layer_data`, which writes them into a viewer: into the matching existing layers
through ``data_setitem`` inside ``block_history`` (one run is one Ctrl-Z per layer), or as new
layers.
"""

from __future__ import annotations

import hashlib
import re
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.classes import ClassSpec, default_color

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels, Layer

    from ..core.result import SegmentationResult

__all__ = [
    "CLASS",
    "CONFIDENCE",
    "MERGE_RULE",
    "SEMANTIC",
    "SOFTWARE",
    "UNLABELLED",
    "LayerImage",
    "apply_layer_data",
    "class_colormap",
    "class_layers",
    "class_metadata",
    "current_plane",
    "describe_image",
    "export_labels",
    "layer_class",
    "layer_classes",
    "merge_class_layers",
    "merge_layer_data",
    "read_plane",
    "result_layer_data",
    "safe_filename",
    "semantic_colormap",
    "semantic_layer_data",
    "split_layer_data",
    "split_semantic_layer",
    "write_labels",
]

CLASS, SEMANTIC, CONFIDENCE = "class", "semantic", "confidence"
SOFTWARE = "napari-maskdiffusion"

#: Value 0 of every exported map (a class layer's "not this class", a semantic map's unlabelled).
UNLABELLED = ClassSpec("unlabelled", (), (0, 0, 0))

MERGE_RULE = (
    "where class layers overlap, the layer higher in napari's layer list (drawn on top) wins; "
    "pixels of no class layer are 0 (unlabelled)"
)

_BAND_AXIS_LABELS = {"band", "bands", "channel", "channels", "c"}
LayerDataTuple = tuple[np.ndarray, dict, str]


# --------------------------------------------------------------------------- image layers


@dataclass(frozen=True)
class LayerImage:
    """How an image layer maps onto the engine's (H, W[, bands]) planes and the label layers.

    band_axis: data axis holding the bands (the last one of an RGB layer), or ``None`` (gray).
    shape: the label layers' shape: the data's shape without the band axis; its last two
        axes are (H, W), any before them are a stack of planes.
    scale, translate: those of the label axes.
    """

    name: str
    shape: tuple[int, ...]
    band_axis: int | None
    band_names: tuple[str, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    georeference: dict | None = None

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


def _level0(layer: Layer):
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
    data = _level0(layer)
    ndim = len(data.shape)
    band_axis = _band_axis(layer, ndim)
    shape = tuple(int(n) for i, n in enumerate(data.shape) if i != band_axis)
    if len(shape) < 2:
        raise ValueError(f"image layer {layer.name!r} has no (H, W) plane (shape {tuple(data.shape)})")
    n_bands = int(data.shape[band_axis]) if band_axis is not None else 1
    names = tuple(layer.metadata.get("band_names") or ())
    if len(names) != n_bands:
        names = ("R", "G", "B", "A")[:n_bands] if layer.rgb else tuple(f"band {i + 1}" for i in range(n_bands))
    if band_axis is not None and not layer.rgb:
        keep = [i for i in range(ndim) if i != band_axis]
        scale = tuple(float(layer.scale[i]) for i in keep)
        translate = tuple(float(layer.translate[i]) for i in keep)
    else:
        scale = tuple(float(s) for s in layer.scale)
        translate = tuple(float(t) for t in layer.translate)
    geo = layer.metadata.get("georeference")
    return LayerImage(layer.name, shape, band_axis, names, scale, translate, dict(geo) if geo else None)


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
    data = _level0(layer)
    ndim = len(data.shape)
    keep = {image.band_axis, *[a for a in range(ndim) if a != image.band_axis][-2:]} - {None}
    stack = iter(plane)
    index = tuple(slice(None) if axis in keep else next(stack) for axis in range(ndim))
    arr = np.asarray(data[index])
    if image.band_axis is not None:
        arr = np.moveaxis(arr, sorted(keep).index(image.band_axis), -1)
    return arr


# --------------------------------------------------------------------------- results -> layers


def _rgba(color: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    return np.array([*(c / 255 for c in color[:3]), alpha], dtype=np.float32)


def class_colormap(color: Sequence[int]):
    """A binary layer's colours: 0 transparent, 1 (and any other value painted) the class colour."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={0: np.zeros(4, np.float32), 1: _rgba(color), None: _rgba(color)})


def semantic_colormap(classes: Sequence[ClassSpec]):
    """A semantic map's colours: value i + 1 is class i; values of no class are grey."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {0: np.zeros(4, np.float32), None: _rgba((128, 128, 128))}
    colors.update({i + 1: _rgba(c.color or default_color(i)) for i, c in enumerate(classes)})
    return DirectLabelColormap(color_dict=colors)


def _base_metadata(image: LayerImage | None, result_meta: Mapping[str, Any]) -> dict:
    meta = {k: v for k, v in result_meta.items() if k not in ("classes", "class", "prompt", "color", "index", "kind")}
    meta["software"] = SOFTWARE
    if image is not None:
        meta["image"] = image.name
        if image.georeference:
            meta["georeference"] = image.georeference
    return meta


def class_metadata(base: Mapping, spec: ClassSpec, index: int) -> dict:
    return {**base, "kind": CLASS, "class": spec.name, "prompt": spec.prompt, "prompts": list(spec.prompts),
            "color": list(spec.color or default_color(index)), "index": index}


def _classes_meta(classes: Sequence[ClassSpec]) -> list[dict]:
    return [dict(c.to_dict(), value=i + 1) for i, c in enumerate(classes)]


def _spatial_kwargs(image: LayerImage) -> dict:
    return {"scale": image.scale, "translate": image.translate}


def result_layer_data(
    image: LayerImage,
    results: Mapping[tuple[int, ...], SegmentationResult],
    *,
    semantic: bool = False,
    confidence: bool = False,
) -> list[LayerDataTuple]:
    """One binary Labels layer per class (and optionally the semantic map and confidence).

    ``results`` maps plane indices of ``image`` to their result; planes not run stay 0.
    """
    first = next(iter(results.values()))
    classes = first.classes
    base = _base_metadata(image, first.metadata())
    out: list[LayerDataTuple] = []
    if confidence:
        conf = np.zeros(image.shape, np.float32)
        for plane, r in results.items():
            conf[plane] = r.confidence
        out.append((conf, {"name": "confidence", "colormap": "magma", "opacity": 0.7, "blending": "translucent",
                           "metadata": {**base, "kind": CONFIDENCE}, **_spatial_kwargs(image)}, "image"))
    if semantic:
        sem = np.zeros(image.shape, np.uint8 if len(classes) < 255 else np.uint16)
        for plane, r in results.items():
            sem[plane] = r.labels.astype(sem.dtype) + 1
        out.append(semantic_layer_data(sem, classes, {**base, "merge_rule": "argmax of the class scores"}, image))
    dtype = np.uint8
    for k, spec in enumerate(classes):
        data = np.zeros(image.shape, dtype)
        for plane, r in results.items():
            data[plane] = r.labels == k
        kwargs = {"name": spec.name, "colormap": class_colormap(spec.color or default_color(k)), "opacity": 0.6,
                  "metadata": class_metadata(base, spec, k), **_spatial_kwargs(image)}
        out.append((data, kwargs, "labels"))
    return out


def semantic_layer_data(data: np.ndarray, classes: Sequence[ClassSpec], metadata: Mapping | None = None,
                        image: LayerImage | None = None, *, name: str = "semantic map") -> LayerDataTuple:
    """A semantic-map Labels layer tuple for ``data`` (value i + 1 = ``classes[i]``)."""
    meta = {**(metadata or {}), "software": SOFTWARE, "kind": SEMANTIC, "classes": _classes_meta(classes)}
    kwargs = {"name": name, "colormap": semantic_colormap(classes), "opacity": 0.6, "metadata": meta}
    if image is not None:
        kwargs.update(_spatial_kwargs(image))
    return data, kwargs, "labels"


# --------------------------------------------------------------------------- layers -> classes


def _layer_color(layer: Labels, value: int = 1) -> tuple[int, int, int]:
    rgba = np.asarray(layer.colormap.map(np.array([value])))[0]
    return tuple(int(round(float(c) * 255)) for c in rgba[:3])


def layer_class(layer: Labels) -> ClassSpec:
    """The class a binary layer holds: from its metadata, else its name and colour."""
    md = layer.metadata
    name = md.get("class") or layer.name
    prompts = tuple(md.get("prompts") or ()) or tuple(
        p.strip() for p in str(md.get("prompt") or "").split("|") if p.strip()
    )
    color = md.get("color") or _layer_color(layer)
    return ClassSpec(name, prompts, tuple(color))


def layer_classes(layer: Labels) -> dict[int, ClassSpec]:
    """The classes of a semantic map by label value: from its metadata, else one per value."""
    listed = layer.metadata.get("classes")
    if listed:
        return {int(d.get("value", i + 1)): ClassSpec.from_dict(d) for i, d in enumerate(listed)}
    values = np.unique(np.asarray(_level0(layer)))
    return {int(v): ClassSpec(f"label {v}", (), _layer_color(layer, int(v))) for v in values if v != 0}


def class_layers(viewer: napari.Viewer, image: str | None = None) -> list[Labels]:
    """The class layers in the viewer, bottom to top, optionally only those of one image."""
    from napari.layers import Labels

    return [
        ly for ly in viewer.layers
        if isinstance(ly, Labels) and ly.metadata.get("kind") == CLASS
        and (image is None or ly.metadata.get("image") == image)
    ]


def merge_layer_data(layers: Sequence[Labels], *, name: str = "semantic map") -> LayerDataTuple:
    """Merge binary class layers into one semantic map; see :data:`MERGE_RULE`.

    ``layers`` are taken in order, so a later layer wins where two overlap: pass them bottom
    to top as napari lists them and the map shows what the canvas shows.
    """
    if not layers:
        raise ValueError("no class layers to merge: run MaskDiffusion first or select binary Labels layers")
    shapes = {tuple(ly.data.shape) for ly in layers}
    if len(shapes) > 1:
        raise ValueError(f"class layers to merge must have the same shape, got {sorted(shapes)}")
    classes = [layer_class(ly) for ly in layers]
    seen = set()
    for c in classes:
        if c.name.lower() in seen:
            raise ValueError(f"two layers hold the class {c.name!r}; rename one before merging")
        seen.add(c.name.lower())
    data = np.zeros(shapes.pop(), np.uint8 if len(layers) < 255 else np.uint16)
    for i, ly in enumerate(layers):
        data[np.asarray(ly.data) != 0] = i + 1
    first = layers[0]
    base = _base_metadata(None, first.metadata)
    base["merge_rule"] = MERGE_RULE
    data, kwargs, kind = semantic_layer_data(data, classes, base, name=name)
    kwargs.update(scale=tuple(first.scale), translate=tuple(first.translate))
    return data, kwargs, kind


def split_layer_data(layer: Labels) -> list[LayerDataTuple]:
    """Split a semantic map into one binary layer per class (a value of no class is dropped)."""
    data = np.asarray(layer.data)
    base = _base_metadata(None, layer.metadata)
    base.pop("merge_rule", None)
    base.setdefault("image", layer.metadata.get("image", layer.name))
    out = []
    for k, (value, spec) in enumerate(sorted(layer_classes(layer).items())):
        kwargs = {"name": spec.name, "colormap": class_colormap(spec.color or default_color(k)), "opacity": 0.6,
                  "metadata": class_metadata(base, spec, k), "scale": tuple(layer.scale),
                  "translate": tuple(layer.translate)}
        out.append(((data == value).astype(np.uint8), kwargs, "labels"))
    return out


def export_labels(data: np.ndarray, metadata: Mapping) -> tuple[np.ndarray, list[ClassSpec]]:
    """A Labels layer's data as (class-index map, classes) for the writers; value 0 is unlabelled.

    A class layer gives [unlabelled, the class]; a semantic map its classes after unlabelled;
    any other Labels layer one class per value ("label 3").
    """
    data = np.asarray(data)
    if data.dtype.kind not in "uib":
        raise ValueError(f"labels must be integers, got {data.dtype}")
    kind = metadata.get("kind")
    if kind == CLASS:
        spec = ClassSpec(metadata.get("class") or "class", tuple(metadata.get("prompts") or ()),
                         tuple(metadata.get("color") or default_color(0)))
        return (data != 0).astype(np.uint8), [UNLABELLED, spec]
    if data.size and data.min() < 0:
        raise ValueError("labels have negative values; napari's labels are 0 (background) or positive")
    top = int(data.max()) if data.size else 0
    by_value = {}
    if kind == SEMANTIC and metadata.get("classes"):
        by_value = {int(d.get("value", i + 1)): ClassSpec.from_dict(d) for i, d in enumerate(metadata["classes"])}
    classes = [UNLABELLED]
    for v in range(1, max(top, max(by_value, default=0)) + 1):
        spec = by_value.get(v)
        classes.append(spec if spec is not None else ClassSpec(f"label {v}", (), default_color(v - 1)))
    return data, classes


# --------------------------------------------------------------------------- into the viewer

_WRITTEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _digest(arr: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(arr).tobytes(), digest_size=16).digest()


def _unwrap(layer: Layer) -> Layer:
    """The layer itself when a plugin widget holds it through napari's ``PublicOnlyProxy``."""
    return getattr(layer, "__wrapped__", layer)


def _is_type(layer: Layer, layer_type: str) -> bool:
    from napari import layers

    return isinstance(layer, getattr(layers, layer_type.capitalize()))


def _matches(layer: Layer, layer_type: str, data: np.ndarray, meta: Mapping) -> bool:
    md = layer.metadata
    return (
        _is_type(layer, layer_type)
        and md.get("software") == SOFTWARE
        and md.get("kind") == meta.get("kind")
        and md.get("image") == meta.get("image")
        and md.get("role") == meta.get("role")
        and (meta.get("kind") != CLASS or str(md.get("class", "")).lower() == str(meta.get("class", "")).lower())
        and tuple(layer.data.shape) == tuple(data.shape)
    )


def _free_name(viewer: napari.Viewer, name: str, image: str | None) -> str:
    taken = {ly.name for ly in viewer.layers}
    if name not in taken or not image:
        return name
    return f"{name} [{image}]"


def write_labels(layer: Labels, data: np.ndarray, planes: Iterable[tuple[int, ...]] = ((),)) -> bool:
    """Write ``data`` into ``layer`` on ``planes`` as one undo step; say whether hand edits were overwritten.

    Uses ``data_setitem`` inside ``block_history``: one call is one Ctrl-Z on that layer.
    """
    edited = False
    known = _WRITTEN.setdefault(_unwrap(layer), {})
    with layer.block_history():
        for plane in planes:
            old, new = layer.data[plane], data[plane]
            if plane in known and known[plane] != _digest(old):
                edited = True
            changed = np.nonzero(old != new)
            if changed[0].size:
                index = tuple(np.full(changed[0].size, p) for p in plane) + changed
                layer.data_setitem(index, new[changed].astype(layer.data.dtype, copy=False), refresh=False)
            known[plane] = _digest(new)
    layer.refresh()
    return edited


def apply_layer_data(
    viewer: napari.Viewer,
    layer_data: Sequence[LayerDataTuple],
    planes: Sequence[tuple[int, ...]] | None = None,
) -> tuple[list[Layer], list[Layer], list[Layer]]:
    """Put layer tuples into the viewer: update the matching layers, add the others.

    A matching layer (same kind, class, image and shape, made by this plugin) gets the new
    values on ``planes`` (all when ``None``) as one undo step; its metadata and colours follow.

    Returns (added, updated, hand_edited): the last are updated layers whose previous values
    had been edited by hand since this plugin wrote them (Ctrl-Z brings the edits back).
    """
    added, updated, edited = [], [], []
    for data, kwargs, layer_type in layer_data:
        meta = kwargs.get("metadata", {})
        target = next((ly for ly in viewer.layers if _matches(ly, layer_type, data, meta)), None)
        write_planes = [tuple(p) for p in planes] if planes is not None else [()]
        if target is None:
            kwargs = {**kwargs, "name": _free_name(viewer, kwargs.get("name", layer_type), meta.get("image"))}
            layer = getattr(viewer, f"add_{layer_type}")(data, **kwargs)
            if layer_type == "labels":
                for plane in write_planes:
                    _WRITTEN.setdefault(_unwrap(layer), {})[plane] = _digest(layer.data[plane])
            added.append(layer)
            continue
        if layer_type == "labels":
            if write_labels(target, data, write_planes):
                edited.append(target)
            if "colormap" in kwargs:
                target.colormap = kwargs["colormap"]
        else:
            for plane in write_planes:
                target.data[plane] = data[plane]
            target.reset_contrast_limits()
            target.refresh()
        target.metadata = {**target.metadata, **meta}
        updated.append(target)
    return added, updated, edited


def safe_filename(name: str) -> str:
    """A class name as a file name: letters, digits, '-', '_' and '.', spaces as '_'."""
    cleaned = re.sub(r"[^\w.-]+", "_", name.strip()).strip("._")
    return cleaned or "class"


# --------------------------------------------------------------------------- commands


def merge_class_layers(viewer: napari.Viewer, image: str | None = None) -> Labels:
    """Merge class layers into the semantic map (npe2 command and widget button).

    Takes the selected class layers when two or more are selected, else all class layers of
    ``image`` (or of the only image that has any). See :data:`MERGE_RULE`.
    """
    selected = [ly for ly in class_layers(viewer) if ly in viewer.layers.selection]
    layers = selected if len(selected) >= 2 else class_layers(viewer, image)
    images = {ly.metadata.get("image") for ly in layers}
    if len(images) > 1:
        raise ValueError("class layers of several images: select the class layers to merge, or pick the image")
    added, updated, _ = apply_layer_data(viewer, [merge_layer_data(layers)])
    return (added or updated)[0]


def split_semantic_layer(viewer: napari.Viewer, layer: Labels | None = None) -> list[Labels]:
    """Split a semantic map (the given or active Labels layer) into class layers (npe2 command)."""
    from napari.layers import Labels

    layer = layer if layer is not None else viewer.layers.selection.active
    if not isinstance(layer, Labels):
        raise ValueError("select the semantic map (a Labels layer) to split")
    if layer.metadata.get("kind") == CLASS:
        raise ValueError(f"{layer.name!r} is already a class layer; select a semantic map to split")
    added, updated, _ = apply_layer_data(viewer, split_layer_data(layer))
    return added + updated

"""Segmentations as napari layers and back: the one place that knows how a result looks in napari.

- A **class layer** is a Labels layer of one class: 0 where the pixel is not that class, 1
  (:data:`DRAFT`) where the model or a refinement put it, 2 (:data:`STROKE`, the value the
  layer paints with) where the annotator did — so painting a class over itself counts. It is
  named after the class and drawn in its colour (strokes stronger), with the image layer's
  scale and translate.
- A **semantic map** is one Labels layer holding a label map (:mod:`maskdiffusion.core.labels`:
  0 = unlabelled, value k = the k-th class).
- Layers carry ``metadata`` (``kind``, ``class``, ``value``, ``prompts``, ``image``, ``model``,
  ``parameters``, ``georeference``...), so merges, splits, exports and readers find them again.

Functions return napari layer-data tuples ``(data, kwargs, layer_type)``, except
:func:`write_into_layer`, the one way pixels are written into an existing layer, and the two
commands at the end.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.classes import ClassSpec, default_color
from ..core.labels import CLASS, DRAFT, SEMANTIC, SOFTWARE, STROKE, merge_masks
from ..errors import BadInputError
from .images import LayerImage, level0
from .napari_compat import outside_history

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels, Layer


__all__ = ["ANNOTATION", "CLASS", "CLASS_ID", "CONFIDENCE", "DRAFT", "MERGE_RULE", "SEMANTIC", "SOFTWARE", "STROKE",
           "class_colormap", "class_layer_data", "class_layers", "layer_class", "layer_classes",
           "merge_class_layers", "merge_layer_data", "safe_filename", "semantic_colormap", "semantic_layer_data",
           "split_layer_data", "split_semantic_layer", "write_into_layer"]

CONFIDENCE = "confidence"
#: Metadata keys binding a class layer to its annotation and class (:mod:`.annotation`).
ANNOTATION, CLASS_ID = "annotation", "class_id"
OPACITY = 0.7

MERGE_RULE = (
    "where class layers overlap, the layer higher in napari's layer list (drawn on top) wins; "
    "pixels of no class layer are 0 (unlabelled)"
)

LayerDataTuple = tuple[np.ndarray, dict, str]
_PER_CLASS = ("kind", "class", "value", "prompt", "prompts", "color", "classes", "merge_rule", "index", ANNOTATION,
              CLASS_ID)


# --------------------------------------------------------------------------- colours and metadata


def _rgba(color: Sequence[int], alpha: float = 1.0) -> np.ndarray:
    return np.array([*(c / 255 for c in color[:3]), alpha], dtype=np.float32)


def _label_colormap(colors: Sequence[np.ndarray]):
    """Value 0 transparent, value k the k-th RGBA colour. A cyclic map (not a direct one), so
    every writer napari offers can save the layer (napari-svg cannot map a direct one)."""
    from napari.utils.colormaps import CyclicLabelColormap

    return CyclicLabelColormap(colors=np.stack([np.zeros(4, np.float32), *colors]))


def class_colormap(color: Sequence[int]):
    """A class layer's colours: 0 transparent, the draft (1) in the class colour, strokes (2)
    in the same colour at full strength."""
    return _label_colormap([_rgba(color, 0.75), _rgba(color)])


def semantic_colormap(classes: Sequence[ClassSpec]):
    """A semantic map's colours: value k is ``classes[k - 1]``'s colour."""
    return _label_colormap([_rgba(c.color or default_color(k)) for k, c in enumerate(classes)])


def base_metadata(image: LayerImage | None, meta: Mapping[str, Any]) -> dict:
    """What every layer of a result shares: run metadata without the per-class entries."""
    out = {k: v for k, v in meta.items() if k not in _PER_CLASS}
    out["software"] = SOFTWARE
    if image is not None:
        out["image"] = image.name
        if image.path:
            out["image_path"] = image.path
        if image.georeference:
            out["georeference"] = image.georeference
    return out


def class_layer_data(data: np.ndarray | None, spec: ClassSpec, value: int, base: Mapping,
                     scale=None, translate=None) -> LayerDataTuple:
    """The layer tuple of the ``value``-th class (1-based): the one place class layers are built."""
    color = spec.color or default_color(value - 1)
    meta = {**base, "kind": CLASS, "class": spec.name, "value": int(value), "prompts": list(spec.prompts),
            "color": list(color)}
    kwargs = {"name": spec.name, "colormap": class_colormap(color), "opacity": OPACITY, "metadata": meta}
    if scale is not None:
        kwargs.update(scale=tuple(scale), translate=tuple(translate))
    return data, kwargs, "labels"


def semantic_layer_data(data: np.ndarray, classes: Sequence[ClassSpec], metadata: Mapping | None = None,
                        image: LayerImage | None = None, *, name: str = "semantic map") -> LayerDataTuple:
    """A semantic-map Labels layer tuple for a label map ``data``."""
    meta = {**(metadata or {}), "software": SOFTWARE, "kind": SEMANTIC,
            "classes": [dict(c.to_dict(), value=k) for k, c in enumerate(classes, start=1)]}
    kwargs = {"name": name, "colormap": semantic_colormap(classes), "opacity": OPACITY, "metadata": meta}
    if image is not None:
        kwargs.update(scale=image.scale, translate=image.translate)
    return data, kwargs, "labels"


# --------------------------------------------------------------------------- layers -> classes


def _layer_color(layer: Labels, value: int = 1) -> tuple[int, int, int]:
    rgba = np.asarray(layer.colormap.map(np.array([value])))[0]
    return tuple(int(round(float(c) * 255)) for c in rgba[:3])


def layer_class(layer: Labels) -> ClassSpec:
    """The class a class layer holds: from its metadata, else its name and colour."""
    md = layer.metadata
    prompts = tuple(md.get("prompts") or ())
    return ClassSpec(md.get("class") or layer.name, prompts, tuple(md.get("color") or _layer_color(layer)))


def layer_classes(layer: Labels) -> dict[int, ClassSpec]:
    """The classes of a semantic map by label value: from its metadata, else one per value."""
    listed = layer.metadata.get("classes")
    if listed:
        return {int(d.get("value", k)): ClassSpec.from_dict(d) for k, d in enumerate(listed, start=1)}
    values = np.unique(np.asarray(level0(layer)))
    return {int(v): ClassSpec(f"label {v}", (), _layer_color(layer, int(v))) for v in values if v != 0}


def class_layers(viewer: napari.Viewer, image: str | None = None) -> list[Labels]:
    """The class layers in the viewer, bottom to top, optionally only those made for ``image``."""
    from napari.layers import Labels

    return [
        ly for ly in viewer.layers
        if isinstance(ly, Labels) and ly.metadata.get("kind") == CLASS
        and (image is None or ly.metadata.get("image") == image)
    ]


def merge_layer_data(layers: Sequence[Labels], *, name: str = "semantic map") -> LayerDataTuple:
    """Merge class layers into one semantic map; see :data:`MERGE_RULE`.

    ``layers`` are taken in order, so a later layer wins where two overlap: pass them bottom
    to top as napari lists them and the map shows what the canvas shows.
    """
    if not layers:
        raise BadInputError("no class layers to merge: run MaskDiffusion first or select class layers")
    shapes = {tuple(ly.data.shape) for ly in layers}
    if len(shapes) > 1:
        raise BadInputError(f"class layers to merge must have the same shape, got {sorted(shapes)}")
    classes = [layer_class(ly) for ly in layers]
    seen = set()
    for c in classes:
        if c.name.lower() in seen:
            raise BadInputError(f"two layers hold the class {c.name!r}; rename one before merging")
        seen.add(c.name.lower())
    data = merge_masks([ly.data for ly in layers])
    first = layers[0]
    base = base_metadata(None, first.metadata)
    base["merge_rule"] = MERGE_RULE
    data, kwargs, kind = semantic_layer_data(data, classes, base, name=name)
    kwargs.update(scale=tuple(first.scale), translate=tuple(first.translate))
    return data, kwargs, kind


def split_layer_data(layer: Labels) -> list[LayerDataTuple]:
    """Split a semantic map into one class layer per class (a value of no class is dropped)."""
    data = np.asarray(layer.data)
    base = base_metadata(None, layer.metadata)
    base.setdefault("image", layer.metadata.get("image", layer.name))
    return [class_layer_data((data == value).astype(np.uint8), spec, k, base, layer.scale, layer.translate)
            for k, (value, spec) in enumerate(sorted(layer_classes(layer).items()), start=1)]


# --------------------------------------------------------------------------- writing into a layer


def write_into_layer(layer: Labels, values: np.ndarray, plane: tuple[int, ...] = (),
                     region: tuple[int, int, int, int] | None = None, *, history: bool = False,
                     refresh: bool = True) -> int:
    """Write ``values`` into ``region`` (y0, y1, x0, x1; default the whole plane) of ``plane``.

    The one way this plugin writes pixels into an existing Labels layer: only the pixels that
    change are written (``data_setitem``), so napari refreshes only what changed. With
    ``history`` the write is one Ctrl-Z on that layer; without (the default) napari's history
    is left alone, because the plane's :class:`~maskdiffusion.session.Session` holds the undo
    for all its layers at once. With ``refresh=False`` (a NumPy layer, no history) the values
    go straight into the array and napari is not told: the caller calls ``layer.refresh()``
    once after all its writes (a changed 6000² map: one redraw per layer, not ~35 partial
    updates of 25 ms). Returns the number of pixels changed.
    """
    data = layer.data
    height, width = data.shape[-2:]
    y0, y1, x0, x1 = region if region is not None else (0, height, 0, width)
    box = (*plane, slice(y0, y1), slice(x0, x1))
    current = np.asarray(data[box])
    if not refresh and not history and isinstance(data, np.ndarray):
        n = int(np.count_nonzero(current != values))
        if n:
            data[box] = values
        return n
    changed = np.nonzero(current != values)
    n = int(changed[0].size)
    if not n:
        return 0
    index = (*(np.full(n, p) for p in plane), changed[0] + y0, changed[1] + x0)
    new = np.asarray(values)[changed].astype(data.dtype, copy=False)
    if history:
        with layer.block_history():
            layer.data_setitem(index, new)
    else:
        with outside_history(layer):
            layer.data_setitem(index, new)
    return n


def safe_filename(name: str) -> str:
    """A class name as a file name: letters, digits, '-', '_' and '.', spaces as '_'."""
    cleaned = re.sub(r"[^\w.-]+", "_", name.strip()).strip("._")
    return cleaned or "class"


# --------------------------------------------------------------------------- commands


def _add_or_update(viewer: napari.Viewer, layer_data: LayerDataTuple) -> Layer:
    """Add a layer, or write into the layer of the same name, kind and shape (one Ctrl-Z)."""
    from napari.layers import Labels

    data, kwargs, layer_type = layer_data
    meta = kwargs.get("metadata", {})
    for layer in viewer.layers:
        if (isinstance(layer, Labels) and layer.name == kwargs["name"]
                and layer.metadata.get("kind") == meta.get("kind")
                and tuple(layer.data.shape) == tuple(data.shape)):
            for plane in np.ndindex(*data.shape[:-2]):
                write_into_layer(layer, data[plane], plane, history=True)
            layer.metadata = {**layer.metadata, **meta}
            layer.colormap = kwargs["colormap"]
            return layer
    return getattr(viewer, f"add_{layer_type}")(data, **kwargs)


def merge_class_layers(viewer: napari.Viewer, layers: Sequence[Labels] | None = None) -> Labels:
    """Merge class layers into the semantic map (npe2 command and dock button).

    Takes ``layers``, else the selected class layers when two or more are selected, else all
    class layers when they belong to one image. See :data:`MERGE_RULE`.
    """
    if layers is None:
        selected = [ly for ly in class_layers(viewer) if ly in viewer.layers.selection]
        layers = selected if len(selected) >= 2 else class_layers(viewer)
        if len({ly.metadata.get("image") for ly in layers}) > 1:
            raise BadInputError("class layers of several images: select the class layers to merge")
    return _add_or_update(viewer, merge_layer_data(layers))


def split_semantic_layer(viewer: napari.Viewer, layer: Labels | None = None) -> list[Labels]:
    """Split a semantic map (the given or active Labels layer) into class layers (npe2 command)."""
    from napari.layers import Labels

    layer = layer if layer is not None else viewer.layers.selection.active
    if not isinstance(layer, Labels):
        raise BadInputError("select the semantic map (a Labels layer) to split")
    if layer.metadata.get("kind") == CLASS:
        raise BadInputError(f"{layer.name!r} is already a class layer; select a semantic map to split")
    return [_add_or_update(viewer, item) for item in split_layer_data(layer)]

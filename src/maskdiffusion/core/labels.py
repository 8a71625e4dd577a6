"""Label values: the one convention of every face (engine, CLI, batch, evaluation, sessions, napari).

**0 = unlabelled; value k = the k-th class (1-based, in the order given).** Maps are uint8 up to
255 classes and uint16 above. GeoTIFFs mark 0 as nodata; palette PNGs draw it transparent
black. Every sidecar ``OUT.classes.json`` spells the values out::

    "label_values": {"0": "unlabelled", "1": "road", "2": "tree"}

Files written before this convention (no ``label_values``) held 0-based class indices
(0 = the first class); :func:`from_stored` reads them that way and says so once.

Inside the math (prototypes, scores, confusion matrices) classes are 0-based indices of arrays;
the conversion happens only at the edges, with :func:`to_index` and :func:`from_index`.

Examples
--------
>>> import numpy as np
>>> from_index(np.array([0, 2, 1]), 3)
array([1, 3, 2], dtype=uint8)
>>> to_index(np.array([0, 1, 3]))
array([-1,  0,  2])
>>> label_values(["road", "tree"])
{'0': 'unlabelled', '1': 'road', '2': 'tree'}
>>> merge_masks([np.array([[1, 1, 0]]), np.array([[0, 1, 0]])])
array([[1, 2, 0]], dtype=uint8)
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "CLASS",
    "DRAFT",
    "LEGACY_NOTE",
    "SEMANTIC",
    "STROKE",
    "SOFTWARE",
    "UNLABELLED",
    "UNLABELLED_NAME",
    "class_view",
    "class_view_edits",
    "from_index",
    "from_stored",
    "is_current",
    "label_dtype",
    "label_values",
    "merge_masks",
    "to_index",
]

#: What every file this package writes names as its ``software`` (sidecars, bundles, sessions).
SOFTWARE = "napari-maskdiffusion"

#: The ``kind`` in the metadata of a map of one class (non-zero = the class) and of a label map
#: of several classes: napari layers and the files written from them.
CLASS, SEMANTIC = "class", "semantic"
#: The values of a class map (napari's class layers): the class as drafted, and as the annotator set it.
DRAFT, STROKE = 1, 2

UNLABELLED = 0
UNLABELLED_NAME = "unlabelled"
LEGACY_NOTE = ("{what} was written before label values were 1-based (no 'label_values' in its metadata): "
               "reading value i as class i + 1")
_warned: set[str] = set()


def label_dtype(n_classes: int) -> type:
    """uint8 for up to 255 classes (values 0..255), uint16 above."""
    return np.uint8 if n_classes <= 255 else np.uint16


def label_values(classes: Iterable) -> dict[str, str]:
    """``{"0": "unlabelled", "1": first name, ...}`` for ``ClassSpec`` objects or names."""
    names = [getattr(c, "name", c) for c in classes]
    return {"0": UNLABELLED_NAME, **{str(k): str(n) for k, n in enumerate(names, start=1)}}


def merge_masks(masks: Sequence[np.ndarray]) -> np.ndarray:
    """One label map of class masks: value k where the k-th mask is non-zero, a later mask
    winning where two overlap (the class layer drawn on top)."""
    labels = np.zeros(np.shape(masks[0]), label_dtype(len(masks)))
    for k, mask in enumerate(masks, start=1):
        labels[np.asarray(mask) != 0] = k
    return labels


def class_view(labels: np.ndarray, edited: np.ndarray | None, value: int) -> np.ndarray:
    """The class map of label ``value``: :data:`STROKE` where ``edited`` (none when ``None``),
    :data:`DRAFT` elsewhere in the class, 0 outside it."""
    mine = labels == value
    draft = np.where(mine, np.uint8(DRAFT), np.uint8(0))
    return draft if edited is None else np.where(mine & edited, np.uint8(STROKE), draft)


def class_view_edits(view: np.ndarray, labels: np.ndarray, edited: np.ndarray, value: int):
    """What the annotator changed in ``view``, a :func:`class_view` of ``value``: (new labels,
    painted, released), or ``None`` if nothing. A non-zero pixel outside the class, and a
    :data:`STROKE` on a class pixel not set yet, are painted ``value``; a class pixel set to 0 is
    released (the next refinement reassigns it).

    Examples
    --------
    >>> labels, edited = np.array([[1, 1, 2]]), np.zeros((1, 3), bool)
    >>> view = class_view(labels, edited, 1)
    >>> view[0, 1], view[0, 2] = 0, STROKE
    >>> new, painted, released = class_view_edits(view, labels, edited, 1)
    >>> new.tolist(), painted.tolist(), released.tolist()
    ([[1, 1, 1]], [[False, False, True]], [[False, True, False]])
    """
    if np.array_equal(view, class_view(labels, edited, value)):
        return None
    expected = labels == value
    painted = ((view == STROKE) & ~(expected & edited)) | ((view != 0) & ~expected)
    released = expected & (view == 0)
    if not painted.any() and not released.any():
        return None
    return np.where(painted, value, labels), painted, released


def from_index(index: np.ndarray, n_classes: int, invalid: np.ndarray | None = None) -> np.ndarray:
    """Label map of 0-based class indices (``-1`` or ``invalid`` pixels become unlabelled)."""
    index = np.asarray(index)
    top = int(index.max()) + 1 if index.size else 0
    out = (index + 1).astype(label_dtype(max(n_classes, top)))
    out[index < 0] = UNLABELLED
    if invalid is not None:
        out[np.asarray(invalid, bool)] = UNLABELLED
    return out


def to_index(labels: np.ndarray) -> np.ndarray:
    """0-based class indices (int64) of a label map; unlabelled pixels become ``-1``."""
    return np.asarray(labels).astype(np.int64) - 1


def is_current(metadata: Mapping | None) -> bool:
    """Whether stored metadata (a sidecar, a GeoTIFF tag) follows this convention.

    Files with ``label_values`` do; so do the napari exports made before it, which listed
    "unlabelled" as their first class (their value 0).
    """
    if not metadata:
        return False
    if isinstance(metadata.get("label_values"), Mapping):
        return True
    classes = metadata.get("classes") or []
    first = classes[0] if classes else None
    return (first.get("name") if isinstance(first, Mapping) else first) == UNLABELLED_NAME


def from_stored(labels: np.ndarray, metadata: Mapping | None, n_classes: int, what: str = "a label file") -> np.ndarray:
    """A stored label map in this convention: as it is, or shifted by one if it predates it."""
    if is_current(metadata):
        return np.asarray(labels)
    if what not in _warned:
        _warned.add(what)
        warnings.warn(LEGACY_NOTE.format(what=what), stacklevel=2)
    return from_index(np.asarray(labels).astype(np.int64), n_classes)

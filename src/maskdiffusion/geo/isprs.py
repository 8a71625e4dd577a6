"""ISPRS Potsdam conventions: colour-coded labels, the Potsdam-3 merge, tile ids in file names."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..core.classes import ClassSpec, as_class_specs, preset_classes
from ..errors import BadInputError

__all__ = [
    "ISPRS_COLORS",
    "POTSDAM6_TO_3",
    "boundary_mask",
    "decode_isprs_labels",
    "encode_isprs_labels",
    "map_labels",
    "tile_id",
]

#: Label colour of each Potsdam class (ISPRS's own colour codes), in the ``potsdam6`` preset order.
ISPRS_COLORS: dict[str, tuple[int, int, int]] = {c.name: c.color for c in preset_classes("potsdam6")}

#: For each ``potsdam6`` class its ``potsdam3`` class: {impervious+car}, {building+clutter},
#: {low vegetation+tree}.
POTSDAM6_TO_3: np.ndarray = np.array([0, 1, 2, 2, 0, 1], dtype=np.int16)

_POTSDAM_ID = re.compile(r"potsdam_(\d+_\d+)", re.IGNORECASE)
_ID_SUFFIXES = re.compile(
    r"([_.-](label|labels|gt|mask|pred|prediction|seg|segmentation|noboundary|rgbir|irrg|rgb|classes|index))+$",
    re.IGNORECASE,
)


def _rgb_key(rgb: np.ndarray) -> np.ndarray:
    key = rgb[..., 0].astype(np.uint32) << 16
    key |= rgb[..., 1].astype(np.uint32) << 8
    key |= rgb[..., 2]
    return key


def _palette(classes) -> np.ndarray:
    specs = preset_classes("potsdam6") if classes is None else as_class_specs(classes)
    return np.array([c.color for c in specs], dtype=np.uint8)


def decode_isprs_labels(rgb: np.ndarray, classes: Sequence[ClassSpec] | None = None) -> tuple[np.ndarray, int]:
    """Turn an RGB colour-coded label image into class indices.

    Black (0, 0, 0), the ignore colour of the ``*_noBoundary`` labels, becomes -1, and so do
    pixels whose colour belongs to no class; those are counted and a warning says how many.

    Parameters
    ----------
    rgb : (H, W, 3) or (H, W, 4) uint8 array
    classes : class list with colours, default the ``potsdam6`` preset (the ISPRS colours).

    Returns
    -------
    index : (H, W) int16, -1 = ignore.
    n_off_palette : number of pixels that are neither a class colour nor black.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise BadInputError(f"colour-coded labels must be (H, W, 3), got shape {rgb.shape}")
    if rgb.dtype != np.uint8:
        raise BadInputError(f"colour-coded labels must be uint8, got {rgb.dtype}")
    palette = _palette(classes)
    lookup = np.full(1 << 24, -1, dtype=np.int16)
    lookup[_rgb_key(palette)] = np.arange(len(palette), dtype=np.int16)
    pixels = _rgb_key(rgb)
    index = lookup[pixels]
    n_off = int(np.count_nonzero((index < 0) & (pixels != 0)))
    if n_off:
        warnings.warn(f"{n_off} label pixels have a colour of no class; they are ignored", stacklevel=2)
    return index, n_off


def encode_isprs_labels(index: np.ndarray, classes: Sequence[ClassSpec] | None = None) -> np.ndarray:
    """Colour-code class indices as (H, W, 3) uint8 with the class colours; -1 becomes black."""
    index = np.asarray(index)
    palette = np.vstack([_palette(classes), np.zeros((1, 3), np.uint8)])
    if index.size and index.max() >= len(palette) - 1:
        raise BadInputError(f"label value {index.max()} has no class (there are {len(palette) - 1})")
    return palette[np.where(index < 0, len(palette) - 1, index)]


def map_labels(index: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Relabel class indices through ``mapping`` (e.g. :data:`POTSDAM6_TO_3`), keeping -1 as -1."""
    index = np.asarray(index)
    mapping = np.asarray(mapping)
    return np.where(index >= 0, mapping[np.clip(index, 0, len(mapping) - 1)], -1).astype(np.int16)


def boundary_mask(labels: np.ndarray, width: int = 3) -> np.ndarray:
    """Pixels within a band of ``width`` pixels along class edges, as ISPRS leaves out of ``*_noBoundary``."""
    if width <= 0:
        return np.zeros(np.shape(labels), dtype=bool)
    size = width + 1
    return ndimage.maximum_filter(labels, size=size) != ndimage.minimum_filter(labels, size=size)


def tile_id(path) -> str:
    """The id that pairs an image, its prediction and its label: ``"2_10"`` for
    ``top_potsdam_2_10_RGBIR.tif`` and ``top_potsdam_2_10_label_noBoundary.tif``; otherwise the
    file stem without suffixes such as ``_label``, ``_gt``, ``_pred`` or ``_seg``.
    """
    stem = Path(path).name.split(".")[0]
    match = _POTSDAM_ID.search(stem)
    if match:
        return match.group(1)
    return _ID_SUFFIXES.sub("", stem) or stem

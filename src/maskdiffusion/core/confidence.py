"""Where the segmentation is unsure: the margin between the two best classes, and the next
region for the annotator to look at."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .refine import FAR

__all__ = ["grid_margin", "next_unsure_region"]


def grid_margin(scores: np.ndarray) -> np.ndarray:
    """(gh, gw) float32 margin between the two best grid scores: a cheap confidence map.

    Shown with the layer scale ``stride`` it is the confidence layer of the annotator; the
    per-pixel margin comes from :func:`assign` with ``confidence=True``.
    """
    if len(scores) < 2:
        return np.ones(scores.shape[1:], np.float32)
    top2 = np.partition(scores, len(scores) - 2, axis=0)[-2:]
    return np.where(top2[0] <= FAR / 2, 1.0, top2[1] - top2[0]).astype(np.float32)


def next_unsure_region(margin: np.ndarray, *, exclude: np.ndarray | None = None, visited: Sequence = (),
                       quantile: float = 0.05, step: int = 4):
    """The largest connected region of low margin, for the annotator to look at next.

    Low margin is below the ``quantile`` of the margins of the pixels not ``exclude``-d (the
    ones the annotator set); regions are found on every ``step``-th pixel. Regions containing
    one of the ``visited`` (y, x) points are skipped, so repeated calls walk down the list.

    Returns ``((y, x) centre, (y0, x0, y1, x1) bounding box)`` in pixels, or ``None``.
    """
    from scipy import ndimage

    m = np.asarray(margin)[::step, ::step]
    ok = np.ones(m.shape, bool) if exclude is None else ~np.asarray(exclude, bool)[::step, ::step]
    if not ok.any():
        return None
    level = np.quantile(m[ok], quantile)
    low = ok & (m <= level)
    if low.sum() == ok.sum():
        low = ok & (m < level)
    regions, n = ndimage.label(low)
    if n == 0:
        return None
    sizes = np.bincount(regions.ravel(), minlength=n + 1)
    sizes[0] = 0
    for y, x in visited:
        yy, xx = int(y) // step, int(x) // step
        if 0 <= yy < m.shape[0] and 0 <= xx < m.shape[1]:
            sizes[regions[yy, xx]] = 0
    best = int(sizes.argmax())
    if sizes[best] == 0:
        return None
    ys, xs = np.nonzero(regions == best)
    inside = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    centre = (int(ys[inside]) * step, int(xs[inside]) * step)
    box = (int(ys.min()) * step, int(xs.min()) * step, int(ys.max() + 1) * step, int(xs.max() + 1) * step)
    return centre, box

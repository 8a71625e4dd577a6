"""The engine: segment an image from class names, tile by tile (``docs/algorithm.md`` §2–3).

:func:`iter_segment` is a generator that yields a :class:`Progress` per tile and returns the
:class:`SegmentationResult`; closing it stops the run between tiles and leaves nothing behind.
:func:`segment` is the plain function on top of it. Both are Qt-free; the napari widget, the
command line and the Dask batch all run this code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .core.classes import ClassSpec, as_class_specs, default_color
from .core.image import ImageSource
from .core.labels import label_dtype
from .core.params import SegmentParams
from .core.result import Progress, SegmentationResult
from .core.tiling import GRID_STRIDE, GridAccumulator, RowBlender, Tile, tile_grid

__all__ = ["PlaneStarted", "drain", "iter_segment", "iter_segment_planes", "segment"]


def segment(image, classes=None, model=None, params: SegmentParams | None = None, *, device: str | None = "auto",
            dtype: str | None = None, progress: Callable[[Progress], None] | None = None,
            keep_features: bool = False, valid: np.ndarray | None = None, **overrides) -> SegmentationResult:
    """Segment ``image`` into ``classes`` with a frozen Stable Diffusion model.

    Parameters
    ----------
    image : array (H, W) or (H, W, bands)
        uint8, uint16 or float; gray, RGB, RGBA or multi-band (choose with ``bands``).
    classes : list of str or ClassSpec, or "a,b,c", or "preset:potsdam6"
        May be omitted in unsupervised mode.
    model : SDModel or str, optional
        A loaded model or its source (hub id, diffusers folder, .safetensors/.ckpt file).
    params : SegmentParams, optional
        Defaults reproduce the paper; keyword ``overrides`` replace single fields
        (``segment(img, "road,tree", tile_size=256)``).
    progress : callable, optional
        Called with each :class:`Progress`.
    keep_features : bool
        Keep the features f̂ on the class-map grid (``result.features``) for refinement.
    valid : (H, W) bool array, optional
        False where the image holds no data (its nodata): those pixels stay unlabelled (0),
        their confidence and scores NaN, and they do not count in the contrast stretch.

    Returns
    -------
    SegmentationResult
        ``labels`` on the input grid: 0 = unlabelled, k = the k-th class.

    Examples
    --------
    >>> import numpy as np
    >>> from maskdiffusion import segment
    >>> image = np.random.default_rng(0).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    >>> result = segment(image, "road,tree", "random:tiny", tile_size=64, overlap=0)
    >>> result.labels.shape, result.class_names
    ((128, 192), ['road', 'tree'])
    >>> set(np.unique(result.labels).tolist()) <= {1, 2}
    True
    """
    steps = iter_segment(image, classes, model, params, device=device, dtype=dtype, keep_features=keep_features,
                         valid=valid, **overrides)
    return drain(steps, progress)


def drain(steps: Generator[Progress, None, SegmentationResult],
          on_step: Callable[[Progress], None] | None = None) -> SegmentationResult:
    """Run an :func:`iter_segment` generator to its end, calling ``on_step`` per step; return
    its result. The generator is closed on any exception (Ctrl-C included), which stops the
    run between tiles and leaves nothing behind."""
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                return stop.value
            if on_step is not None:
                on_step(step)
    finally:
        steps.close()


def iter_segment(image, classes=None, model=None, params: SegmentParams | None = None, *,
                 device: str | None = "auto", dtype: str | None = None, keep_features: bool = False,
                 valid: np.ndarray | None = None, prototype_memory=None,
                 **overrides) -> Generator[Progress, None, SegmentationResult]:
    """Like :func:`segment`, as a generator of :class:`Progress` returning the result.

    ``keep_features`` keeps f̂ on the class-map grid in ``result.features`` (float16) and the
    blended scores on that grid in ``result.grid_scores``, for refinement without another
    model call. ``valid`` is as in :func:`segment`. ``prototype_memory`` (a
    :class:`~maskdiffusion.core.memory.ClassMemory`, used by a dataset) mixes what corrected
    images taught into every class prototype (``docs/algorithm.md`` §4.7); without it, the paper's.
    Bad input raises before the first yield: ``ClassListError``, ``ParamsError`` and
    ``InputImageError`` (all ``ValueError``) with one clear message.

    Examples
    --------
    Each step says how far the run is; a band of rows comes with its final labels as soon as
    the tiles that blend into it are done. Closing the generator stops between tiles.

    >>> import numpy as np
    >>> from maskdiffusion.engine import drain, iter_segment
    >>> image = np.random.default_rng(0).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    >>> steps = iter_segment(image, "road,tree", "random:tiny", tile_size=64, overlap=0)
    >>> [next(steps).stage for _ in range(3)]
    ['load', 'load', 'features']
    >>> steps.close()
    >>> def show(step):
    ...     if step.region is not None:
    ...         print(step.done, "of", step.total, "tiles: rows", step.region[:2], step.labels.shape)
    >>> result = drain(iter_segment(image, "road,tree", "random:tiny", tile_size=64, overlap=0), show)
    4 of 6 tiles: rows (0, 64) (64, 192)
    6 of 6 tiles: rows (64, 128) (64, 192)
    """
    params = (params or SegmentParams()).replace(**overrides) if overrides else (params or SegmentParams())
    specs = _class_specs(classes, params)
    source = ImageSource(image, params.bands, params.scale, valid=valid)
    return _run(source, specs, model, params, device, dtype, keep_features, prototype_memory)


@dataclass(frozen=True)
class PlaneStarted:
    """Yielded by :func:`iter_segment_planes` before each plane of a stack: plane ``index`` of ``count``."""

    index: int
    count: int


def iter_segment_planes(read_plane: Callable, planes: Sequence[tuple[int, ...]], classes, model, params):
    """Segment each plane of a stack (``read_plane(plane)`` gives its pixels) with a CPU core spared
    (:func:`~maskdiffusion.model.loading.spare_one_core`): yield :class:`PlaneStarted` and the
    plane's :class:`Progress` steps, return ``{plane: result}`` (results keep their features for
    refinement)."""
    from .model.loading import spare_one_core

    results = {}
    with spare_one_core(model.device):
        for i, plane in enumerate(planes):
            yield PlaneStarted(i, len(planes))
            results[plane] = yield from iter_segment(read_plane(plane), classes, model, params, keep_features=True)
    return results


def _class_specs(classes, params: SegmentParams) -> list[ClassSpec]:
    if params.unsupervised and (classes is None or (not isinstance(classes, str) and len(classes) == 0)):
        return []
    return as_class_specs(classes if classes is not None else [])


def _load(model, device, dtype):
    from .model.loading import SDModel, load_model

    return model if isinstance(model, SDModel) else load_model(model, device, dtype)


def _run(source: ImageSource, specs, model, params: SegmentParams, device, dtype, keep_features: bool, memory=None):
    import torch

    from .core.prototypes import (
        class_maps,
        class_scores,
        cluster_scores,
        normalize_features,
        prototype_sums,
        prototypes,
        upsample,
    )
    from .core.tokens import layout_prompts
    from .model.forward import TileRunner

    tiles = tile_grid(source.shape, params.tile_size, params.overlap)
    shared = params.unsupervised is not None or params.prototypes == "image"
    total = len(tiles) * (2 if shared else 1)
    yield Progress(0, total, "load", "loading the model")
    sd = _load(model, device, dtype)
    yield Progress(0, total, "load", f"model {sd.source} on {sd.device.type}, {sd.precision}")
    layout = layout_prompts(specs, sd.tokenizer)
    runner = TileRunner(sd, params, layout.input_ids)
    for message in runner.prepare((tiles[0].h, tiles[0].w)):
        yield Progress(0, total, "load", message)
    n_out = params.unsupervised or len(specs)
    out = _Outputs(source.shape, source.input_shape, n_out, params.return_scores, params.return_confidence,
                   source.valid)
    blender = RowBlender(source.shape, n_out, params.tile_size, params.overlap, out.write_rows)
    attention = GridAccumulator(source.shape, len(specs))
    grid_scores = GridAccumulator(source.shape, n_out) if keep_features else None
    features = None

    def mixed(protos):
        return protos if memory is None else memory.mix(protos, specs)

    def capture(tile: Tile):
        nonlocal features
        f = runner(source.tile(tile.y, tile.x, tile.h, tile.w))
        maps, feats = class_maps(f.token_maps, layout.spans), normalize_features(f.coarse, f.fine)
        if keep_features:
            features = _paste_grid(features, tile, feats, source.shape, params.overlap)
        return maps, feats

    def blend(tile: Tile, scores):
        blender.add(tile, upsample(scores, (tile.h, tile.w)).float().cpu().numpy())
        if grid_scores is not None:
            grid_scores.add(tile, scores.float().cpu().numpy(), params.overlap)

    def step(done: int, stage: str, tile: Tile, draft=None) -> Progress:
        """The progress after ``tile``, with the rows finished meanwhile (or the tile's draft)."""
        message = f"tile {tile.index + 1} of {len(tiles)}"
        if draft is not None:
            region, labels = _tile_draft(tile, draft, out)
            return Progress(done, total, stage, message, region, labels, final=False)
        region, labels = out.take_finished()
        return Progress(done, total, stage, message, region, labels)

    clusters_to_classes = None
    if not shared:
        for tile in tiles:
            maps, feats = capture(tile)
            blend(tile, class_scores(feats, mixed(prototypes(maps, feats))))
            attention.add(tile, maps.cpu().numpy())
            if tile is tiles[-1]:
                blender.finish()
            yield step(tile.index + 1, "features", tile)
    else:
        with _FeatureCache(len(tiles)) as cache:
            num = den = None
            for tile in tiles:
                maps, feats = capture(tile)
                cache.put(tile.index, feats, maps)
                attention.add(tile, maps.cpu().numpy())
                draft = None
                if specs:
                    n, d = prototype_sums(maps, feats)
                    num, den = (n, d) if num is None else (num + n, den + d)
                    draft = class_scores(feats, mixed(prototypes(maps, feats))) if not params.unsupervised else None
                yield step(tile.index + 1, "features", tile, draft)
            if params.unsupervised:
                centers, clusters_to_classes = _fit_clusters(cache, tiles, source.shape, params, len(specs))
                assign = partial(cluster_scores, centroids=torch.from_numpy(centers).to(sd.device))
            else:
                assign = partial(class_scores, protos=mixed(num / den.clamp_min(1e-12)[:, None]))
            for tile in tiles:
                blend(tile, assign(cache.features(tile.index).to(sd.device)))
                if tile is tiles[-1]:
                    blender.finish()
                yield step(len(tiles) + tile.index + 1, "assign", tile)
    blender.finish()
    labels, confidence, scores = out.on_input_grid()
    classes = specs if not params.unsupervised else _cluster_specs(clusters_to_classes, specs)
    return SegmentationResult(
        labels=labels,
        classes=classes,
        confidence=confidence,
        attention=attention.result(),
        attention_stride=GRID_STRIDE / params.scale,
        params=params,
        model=sd.source,
        device=sd.device.type,
        precision=sd.precision,
        backend=runner.backend,
        scores=scores,
        clusters_to_classes=clusters_to_classes,
        prompt_classes=list(specs) if params.unsupervised else [],
        features=features,
        grid_scores=None if grid_scores is None else grid_scores.result(),
        bands=source.bands,
    )


def _paste_grid(grid, tile: Tile, feats, shape, overlap: int):
    """Write a tile's (C, gh, gw) features into the image's float16 grid from half the overlap
    past its top and left edges on (the tile before keeps the cells up to there): a cell of an
    overlap takes its features from the tile it lies deepest in, as the blended scores mostly do.
    A tile's first rows and columns carry the model's edge effects: when later tiles won the
    whole overlap, a refinement of a 3000² image turned bands 10–40 px after every tile start
    into one class."""
    if grid is None:
        grid = np.zeros((feats.shape[0], -(-shape[0] // GRID_STRIDE), -(-shape[1] // GRID_STRIDE)), np.float16)
    gy, gx = int(round(tile.y / GRID_STRIDE)), int(round(tile.x / GRID_STRIDE))
    h, w = min(feats.shape[1], grid.shape[1] - gy), min(feats.shape[2], grid.shape[2] - gx)
    half = -(-overlap // 2 // GRID_STRIDE)
    skip_y, skip_x = (half if tile.y > 0 else 0), (half if tile.x > 0 else 0)
    grid[:, gy + skip_y : gy + h, gx + skip_x : gx + w] = feats[:, skip_y:h, skip_x:w].cpu().numpy()
    return grid


class _Outputs:
    """The output arrays, filled band by band from blended scores (labels 1-based, see
    :mod:`maskdiffusion.core.labels`), and the rows finished since they were last taken.

    The scores live on the working grid (the input's times ``scale``); labels are mapped back
    to the input grid by nearest neighbour as they are finished, so memory holds the arrays
    asked for and one band, at any scale. Pixels that are not ``valid`` stay unlabelled.
    """

    def __init__(self, shape, input_shape, n_classes: int, keep_scores: bool, keep_confidence: bool,
                 valid: np.ndarray | None = None):
        self.shape, self.input_shape = tuple(shape), tuple(input_shape)
        self.valid = valid
        self.rows = _nearest(self.input_shape[0], self.shape[0])
        self.cols = _nearest(self.input_shape[1], self.shape[1])
        self.labels = np.zeros(self.input_shape, label_dtype(n_classes))
        self.confidence = np.zeros(shape, np.float32) if keep_confidence else None
        self.scores = np.zeros((n_classes, *shape), np.float32) if keep_scores else None
        self.finished = (0, 0)

    def write_rows(self, y0: int, y1: int, scores: np.ndarray) -> None:
        best = (scores.argmax(0) + 1).astype(self.labels.dtype)
        i0, i1 = np.searchsorted(self.rows, (y0, y1))
        self.labels[i0:i1] = best[self.rows[i0:i1] - y0][:, self.cols]
        if self.valid is not None:
            self.labels[i0:i1][~self.valid[i0:i1]] = 0
        if self.confidence is not None:
            if len(scores) > 1:
                top2 = np.partition(scores, len(scores) - 2, axis=0)[-2:]
                self.confidence[y0:y1] = top2[1] - top2[0]
            else:
                self.confidence[y0:y1] = 1.0
        if self.scores is not None:
            self.scores[:, y0:y1] = scores
        start = self.finished[0] if self.finished[1] > self.finished[0] else i0
        self.finished = (start, i1)

    def take_finished(self):
        """The input-grid rows finished since the last call: (region, labels) or (None, None)."""
        i0, i1 = self.finished
        self.finished = (i1, i1)
        if i1 <= i0:
            return None, None
        return (int(i0), int(i1), 0, self.input_shape[1]), self.labels[i0:i1].copy()

    def on_input_grid(self):
        """Labels, confidence and scores on the input's pixel grid (resampling at scale != 1);
        NaN where the input holds no data."""
        confidence, scores = self.confidence, self.scores
        if self.shape != self.input_shape:
            confidence, scores = _zoom(confidence, self.input_shape), _zoom(scores, self.input_shape)
        if self.valid is not None:
            for array in (a for a in (confidence, scores) if a is not None):
                array[..., ~self.valid] = np.nan
        return self.labels, confidence, scores


def _nearest(n_input: int, n_working: int) -> np.ndarray:
    """For each input pixel along an axis, the working-grid pixel under its centre."""
    return np.minimum(((np.arange(n_input) + 0.5) * n_working / n_input).astype(np.int64), n_working - 1)


def _zoom(array: np.ndarray | None, shape) -> np.ndarray | None:
    """Bilinear resampling (pixel centres aligned) into float32, one band at a time."""
    if array is None:
        return None
    from scipy.ndimage import zoom

    planes = array if array.ndim == 3 else array[None]
    out = np.empty((len(planes), *shape), np.float32)
    factors = (shape[0] / planes.shape[1], shape[1] / planes.shape[2])
    for plane, target in zip(planes, out):
        zoom(plane, factors, output=target, order=1, mode="nearest", grid_mode=True)
    return out if array.ndim == 3 else out[0]


def _tile_draft(tile: Tile, scores, out: _Outputs):
    """A provisional label map of one tile from its own prototypes, on the input grid."""
    h, w = min(tile.h, out.shape[0] - tile.y), min(tile.w, out.shape[1] - tile.x)
    from .core.prototypes import upsample

    best = (upsample(scores, (tile.h, tile.w))[:, :h, :w].argmax(0) + 1).cpu().numpy().astype(out.labels.dtype)
    i0, i1 = np.searchsorted(out.rows, (tile.y, tile.y + h))
    j0, j1 = np.searchsorted(out.cols, (tile.x, tile.x + w))
    labels = best[out.rows[i0:i1] - tile.y][:, out.cols[j0:j1] - tile.x]
    if out.valid is not None:
        labels[~out.valid[i0:i1, j0:j1]] = 0
    return (int(i0), int(i1), int(j0), int(j1)), labels


class _FeatureCache:
    """Per-tile f̂ (float16, in a temporary memory map) and class maps, for a second pass."""

    def __init__(self, n_tiles: int):
        self.n = n_tiles
        self.maps: dict[int, np.ndarray] = {}

    def __enter__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="maskdiffusion-")
        self.array = None
        return self

    def __exit__(self, *exc):
        self.array = None
        self._dir.cleanup()

    def put(self, i: int, feats, maps) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(
                Path(self._dir.name) / "features.npy", mode="w+", dtype=np.float16, shape=(self.n, *feats.shape)
            )
        self.array[i] = feats.cpu().numpy().astype(np.float16)
        self.maps[i] = maps.cpu().numpy()

    def features(self, i: int):
        import torch

        return torch.from_numpy(self.array[i].astype(np.float32))


def _fit_clusters(cache: _FeatureCache, tiles, shape, params: SegmentParams, n_classes: int):
    """Centroids from a sample of the image's grid cells, and each cluster's best class."""
    from .core.clustering import MAX_SAMPLES, fit_centroids, name_clusters

    rng = np.random.default_rng(params.seed)
    per_tile = max(1, MAX_SAMPLES // len(tiles))
    feats, pos, maps = [], [], []
    for t in tiles:
        gh = -(-min(t.h, shape[0] - t.y) // GRID_STRIDE)
        gw = -(-min(t.w, shape[1] - t.x) // GRID_STRIDE)
        cells = rng.choice(gh * gw, min(per_tile, gh * gw), replace=False)
        yy, xx = np.divmod(cells, gw)
        f = cache.array[t.index]
        feats.append(f[:, yy, xx].T.astype(np.float32))
        pos.append(np.stack([(t.y + yy * GRID_STRIDE) / shape[0], (t.x + xx * GRID_STRIDE) / shape[1]], 1))
        maps.append(cache.maps[t.index][:, yy, xx].T)
    feats, pos, maps = np.concatenate(feats), np.concatenate(pos), np.concatenate(maps)
    centers = fit_centroids(feats, params.unsupervised, params.clustering, pos, params.spatial_weight, params.seed)
    assigned = (feats @ centers.T - 0.5 * (centers**2).sum(1)).argmax(1)
    names = name_clusters(assigned, maps, params.unsupervised) if n_classes else np.full(params.unsupervised, -1)
    return centers, names


def _cluster_specs(clusters_to_classes: np.ndarray, specs: list[ClassSpec]) -> list[ClassSpec]:
    """Clusters as classes: named after their best-overlapping class, else "cluster j"."""
    out, used = [], {}
    for j, k in enumerate(clusters_to_classes):
        if k < 0:
            out.append(ClassSpec(f"cluster {j + 1}", color=default_color(j)))
            continue
        base = specs[k]
        used[k] = used.get(k, 0) + 1
        name = base.name if used[k] == 1 else f"{base.name} {used[k]}"
        out.append(ClassSpec(name, base.prompts, base.color if used[k] == 1 else default_color(j)))
    return out

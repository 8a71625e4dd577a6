"""The worker side of a batch run: Dask tasks that read, segment and write one input each.

Workers load the model once per process (:func:`worker_model`), write their outputs
atomically and return a record; a tile's failure is recorded, never raised, except a model
that cannot be loaded, which stops the run.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec
from ..core.tiling import GRID_STRIDE
from .jobs import BatchConfig, TileJob, written_files

__all__ = ["assign_tile", "segment_tile", "shared_labels", "tile_features", "warm_up", "worker_model"]

_MODELS: dict[tuple, object] = {}
_LOADS: dict[tuple, int] = {}


def worker_model(config: BatchConfig):
    """This process's model for ``config``: loaded on its first task, kept for the next ones.

    Also sets torch's thread count to ``config.threads``: Dask's nannies start workers with
    ``OMP_NUM_THREADS=1``.
    """
    if config.threads:
        import torch

        if torch.get_num_threads() != config.threads:
            torch.set_num_threads(config.threads)
    key = (config.model, config.device, config.dtype)
    if key not in _MODELS:
        from ..model.loading import load_model

        _MODELS[key] = load_model(config.model, config.device, config.dtype)
        _LOADS[key] = _LOADS.get(key, 0) + 1
    return _MODELS[key]


def _worker_info(config: BatchConfig) -> dict:
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = None
    loads = _LOADS.get((config.model, config.device, config.dtype), 0)
    return {"worker": address, "pid": os.getpid(), "model_loads": loads}


@contextmanager
def _tile_record(job: TileJob, config: BatchConfig) -> Iterator[dict]:
    """A record of one task: time, worker, warnings; an exception becomes ``failed`` + reason.

    A model that cannot be loaded is not the tile's fault: it propagates and stops the run.
    """
    from ..model.loading import ModelNotFoundError

    record = {"input": str(job.input), "output": str(job.output), "status": "done"}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield record
        except ModelNotFoundError:
            raise
        except Exception as e:
            record.update(status="failed", reason=one_line(e))
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["warnings"] = sorted({str(w.message) for w in caught if not _noise(w)})
    record.update(_worker_info(config))


def _noise(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, (DeprecationWarning, FutureWarning)) or "NotGeoreferenced" in w.category.__name__


def one_line(e: BaseException) -> str:
    """A failure's reason in one line: our errors as they say it, others with their type."""
    from ..errors import MaskDiffusionError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, MaskDiffusionError) else f"{type(e).__name__}: {text}".rstrip(": ")


def segment_tile(job: TileJob, config: BatchConfig) -> dict:
    """Dask task: read, segment and write one tile (per-tile prototypes, one pass)."""
    from ..engine import segment
    from ..geo.raster_io import read_input

    with _tile_record(job, config) as record:
        model = worker_model(config)
        image, geo, valid = read_input(job.input)
        result = segment(image, list(config.classes), model, config.params, return_confidence=False, valid=valid,
                         keep_features=config.save_refine)
        state = None
        if config.save_refine:
            from ..core.refine import RefineState

            state = RefineState.from_result(result)
        _write_output(job, result.labels, result.classes, geo, _metadata(job, config, result.metadata(), geo), state)
        record["written"] = written_files(job)
    return record


def tile_features(job: TileJob, config: BatchConfig) -> dict:
    """Dask task, shared pass 1: keep f̂ and return Σ A_k f̂, Σ A_k (from the cache if there)."""
    with _tile_record(job, config) as record:
        cached = _read_cache(job.cache())
        if cached is None:
            cached = _compute_cache(job, config)
        record.update(num=cached["num"], den=cached["den"], from_cache=cached.get("from_cache", False))
    return record


def assign_tile(job: TileJob, config: BatchConfig, protos: np.ndarray, n_tiles: int) -> dict:
    """Dask task, shared pass 2: labels from the kept features and the shared prototypes
    (the input's nodata pixels left unlabelled, as in pass 1)."""
    from ..geo.raster_io import GeoInfo, read_input

    with _tile_record(job, config) as record:
        cached = _read_cache(job.cache(), with_features=True)
        if cached is None:
            raise RuntimeError("its features from pass 1 are missing; rerun to redo it")
        meta = json.loads(cached["meta"])
        grid = np.einsum("kc,chw->khw", protos, cached["features"].astype(np.float32))
        labels = shared_labels(grid, _scaled_shape(cached["shape"], config.params.scale))
        labels = _to_input_grid(labels, tuple(cached["shape"]))
        valid = read_input(job.input)[2]
        if valid is not None:
            labels[~valid] = 0
        classes = [ClassSpec.from_dict(c) for c in meta["classes"]]
        meta["batch"]["prototype_tiles"] = n_tiles
        geo = GeoInfo.from_dict(meta["georeference"])
        _write_output(job, labels, classes, geo, meta)
        record["written"] = written_files(job)
        job.cache().unlink(missing_ok=True)
    return record


def _metadata(job: TileJob, config: BatchConfig, result_meta: dict, geo) -> dict:
    from ..geo.raster_io import image_reference

    return dict(result_meta, image=image_reference(job.input, job.output), georeference=geo.to_dict(),
                batch={"fingerprint": job.fingerprint, "shared_prototypes": config.shared})


def _write_output(job: TileJob, labels, classes, geo, metadata: dict, state=None) -> None:
    """Labels, sidecar and (``--save-refine``) the refinement state, committed together
    (:class:`~maskdiffusion.geo.atomic.StagedOutputs`): a failure or a kill leaves the tile's
    old files as they were, never one without the others."""
    from ..geo.atomic import StagedOutputs
    from ..geo.raster_io import write_labels, write_sidecar
    from ..geo.refine_file import write_refine_state

    with StagedOutputs():
        write_labels(job.output, labels, classes, geo, metadata)
        if state is not None:
            write_refine_state(job.refine, state, metadata)
        write_sidecar(job.output, metadata)


def _compute_cache(job: TileJob, config: BatchConfig) -> dict:
    from ..engine import segment
    from ..geo.atomic import atomic_output
    from ..geo.raster_io import read_input

    model = worker_model(config)
    image, geo, valid = read_input(job.input)
    params = config.params.replace(prototypes="tile")
    result = segment(image, list(config.classes), model, params, keep_features=True, return_confidence=False,
                     valid=valid)
    from ..core.prototypes import prototype_sums

    num, den = (s.numpy() for s in prototype_sums(result.attention, result.features))
    meta = _metadata(job, config, result.metadata(), geo)
    job.cache().parent.mkdir(exist_ok=True)
    with atomic_output(job.cache()) as tmp, open(tmp, "wb") as f:
        np.savez(f, features=result.features, num=num, den=den, shape=np.array(image.shape[:2]),
                 meta=np.array(json.dumps(meta)))
    return {"num": num, "den": den}


def _read_cache(path: Path, with_features: bool = False) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = ("num", "den", "shape", "meta") + (("features",) if with_features else ())
            out = {k: z[k] for k in keys}
    except (OSError, ValueError, KeyError):
        return None
    out["meta"] = str(out["meta"])
    out["from_cache"] = True
    return out

def shared_labels(grid_scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Argmax over K of (K, gh, gw) grid scores resized bilinearly ×16, cropped to ``shape``:
    the engine's assignment, band by band (:func:`maskdiffusion.core.refine.assign`)."""
    from ..core.refine import assign

    return assign(grid_scores, shape, GRID_STRIDE)


def _scaled_shape(shape, scale: float) -> tuple[int, int]:
    return tuple(max(1, int(round(int(n) * scale))) for n in shape)


def _to_input_grid(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if labels.shape == tuple(shape):
        return labels
    from skimage.transform import resize

    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)


def warm_up(client, config: BatchConfig) -> dict:
    """Load the model on every worker now (in parallel); returns {worker: model loads so far}."""
    def load():
        worker_model(config)
        return _worker_info(config)["model_loads"]

    return client.run(load)

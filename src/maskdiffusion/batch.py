"""The ``batch`` command: segment many image files on a Dask cluster, resumably.

Each input file (a "tile", e.g. one 6000×6000 Potsdam tile) becomes ``OUT_DIR/<stem>.tif``
plus its sidecar ``<stem>.classes.json``. The driver sends paths, never pixels: workers read
their own inputs, load the model once per process (:func:`worker_model`) and write their
outputs atomically. An output counts as finished only when both files exist and carry the
fingerprint of this run's settings and of the input file (size and modification time), so a
rerun skips finished tiles, redoes stale or broken ones, and never mistakes a run with other
parameters for a finished one. A tile that fails is recorded with its reason in
``OUT_DIR/batch_status.json`` and the others go on. On an existing cluster (``--scheduler``)
the workers must see the same paths (a shared file system). One run per output folder at a time.

``--shared-prototypes`` gives every tile the same class prototypes: a first pass keeps each
tile's features f̂ and class maps A_k on the class-map grid (in ``OUT_DIR/.maskdiffusion-cache``)
and returns Σ A_k f̂ and Σ A_k; the driver adds them over the tiles into c_k (saved as
``OUT_DIR/batch_prototypes.npz``); a second pass assigns each tile from its kept features,
without another model call. The per-tile default (the paper) needs one pass.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .cli import (
    EXIT_ERROR,
    EXIT_OK,
    UsageError,
    _model_source,
    add_class_arguments,
    add_model_arguments,
    add_param_arguments,
    classes_from_args,
    params_from_args,
)
from .core.classes import ClassSpec
from .core.params import DEFAULT_MODEL, SegmentParams
from .core.tiling import GRID_STRIDE

__all__ = [
    "BatchConfig",
    "BatchInputError",
    "TileJob",
    "add_batch_parser",
    "expand_inputs",
    "is_finished",
    "plan_jobs",
    "process",
    "run_batch",
    "shared_labels",
    "warm_up",
    "worker_model",
]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STATUS_FILE = "batch_status.json"
PROTOTYPES_FILE = "batch_prototypes.npz"
CACHE_DIR = ".maskdiffusion-cache"
EXIT_INTERRUPTED = 130
_GLOB_CHARS = re.compile(r"[*?\[]")
_TEMPORARY = re.compile(r"^\.(?P<stem>.+?)(\.classes)?\.[0-9a-f]{12}\.tmp\.(tif|json)$")
_CACHED = re.compile(r"^(?P<stem>.+)\.[0-9a-f]{16}\.npz$")


class BatchInputError(UsageError, ValueError):
    """Bad batch input (no such input, clashing names, options that do not go together): exit 2.

    Also a ``ValueError``, so ``python -m maskdiffusion.cli`` (where ``cli`` is ``__main__`` and
    its ``UsageError`` another class) reports it as bad input too.
    """


# --- what to do ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchConfig:
    """The settings every tile of a run shares; they decide whether an old output still counts."""

    classes: tuple[ClassSpec, ...]
    params: SegmentParams
    model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    threads: int | None = None
    shared: bool = False

    def identity(self) -> dict:
        """What changes the labels (not the threads): hashed into every tile's fingerprint."""
        return {
            "classes": [c.to_dict() for c in self.classes],
            "parameters": self.params.to_dict(),
            "model": self.model or DEFAULT_MODEL,
            "device": self.device,
            "dtype": self.dtype,
            "shared_prototypes": self.shared,
        }


@dataclass(frozen=True)
class TileJob:
    """One input file, where its output goes, and the fingerprint a finished output carries."""

    input: Path
    output: Path
    fingerprint: str

    @property
    def stem(self) -> str:
        return self.output.stem

    @property
    def sidecar(self) -> Path:
        return self.output.with_suffix(".classes.json")

    def cache(self) -> Path:
        """The shared-prototypes features of this tile, kept between the two passes."""
        return self.output.parent / CACHE_DIR / f"{self.stem}.{self.fingerprint[:16]}.npz"


def expand_inputs(items: Sequence[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Files, folders (their image files, not recursive) and glob patterns, as a sorted list.

    Hidden files and files inside ``exclude`` (the output folder) are left out, so a rerun
    never takes its own outputs for inputs. Raises :class:`BatchInputError` for a path that does
    not exist or a pattern that matches nothing.
    """
    found: dict[Path, None] = {}
    exclude = exclude.resolve() if exclude is not None else None
    for item in items:
        text = os.fspath(item)
        path = Path(text).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.exists():
            matches = [path]
        elif _GLOB_CHARS.search(text):
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True) if Path(p).is_file())
        else:
            raise BatchInputError(f"input {text} does not exist")
        matches = [p.resolve() for p in matches if not p.name.startswith(".")]
        if exclude is not None:
            matches = [p for p in matches if exclude not in p.parents]
        if not matches:
            raise BatchInputError(f"no image files in {text}")
        found.update(dict.fromkeys(matches))
    return list(found)


def _input_signature(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def plan_jobs(inputs: Sequence[Path], out_dir: Path, config: BatchConfig) -> list[TileJob]:
    """One job per input, ``out_dir/<stem>.tif``; two inputs with the same stem are an error.

    With shared prototypes every fingerprint also covers the whole set of inputs, since the
    prototypes (and so every tile's labels) depend on all of them.
    """
    by_stem: dict[str, Path] = {}
    for path in inputs:
        if path.stem in by_stem:
            raise BatchInputError(f"{by_stem[path.stem]} and {path} would both write {path.stem}.tif; rename one")
        by_stem[path.stem] = path
    signatures = {stem: _input_signature(p) for stem, p in by_stem.items()}
    run = config.identity()
    if config.shared:
        run["tile_set"] = sorted(signatures.values(), key=lambda s: s["name"])
    return [
        TileJob(path, out_dir / f"{stem}.tif", _digest({"run": run, "input": signatures[stem]}))
        for stem, path in by_stem.items()
    ]


def is_finished(job: TileJob) -> bool:
    """Output and sidecar both readable, and both made from this input with this run's settings."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        sidecar = json.loads(job.sidecar.read_text(encoding="utf-8"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(job.output) as src:
                tagged = json.loads(src.tags().get("MASKDIFFUSION_METADATA", "{}"))
    except (OSError, ValueError, RasterioError):
        return False
    return _fingerprint_of(sidecar) == job.fingerprint == _fingerprint_of(tagged)


def _fingerprint_of(metadata) -> str | None:
    batch = metadata.get("batch") if isinstance(metadata, dict) else None
    return batch.get("fingerprint") if isinstance(batch, dict) else None


def _remove_temporaries(jobs: Sequence[TileJob]) -> None:
    """Delete what interrupted runs left: temporary files of atomic writes, features of old settings."""
    stems = {job.stem for job in jobs}
    current = {job.cache().name for job in jobs}
    for folder in {job.output.parent for job in jobs}:
        for p in folder.glob(".*.tmp.*"):
            m = _TEMPORARY.match(p.name)
            if m and m.group("stem") in stems:
                p.unlink(missing_ok=True)
        cache = folder / CACHE_DIR
        for p in cache.iterdir() if cache.is_dir() else ():
            m = _CACHED.match(p.name)
            if p.name.endswith(".tmp.npz") or (m and m.group("stem") in stems and p.name not in current):
                p.unlink(missing_ok=True)


# --- on the workers ----------------------------------------------------------------------------

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
        from .model.loading import load_model

        _MODELS[key] = load_model(config.model, config.device, config.dtype)
        _LOADS[key] = _LOADS.get(key, 0) + 1
    return _MODELS[key]


def _worker_info(config: BatchConfig) -> dict:
    try:
        from distributed import get_worker

        address = get_worker().address
    except (ImportError, ValueError):
        address = None
    return {"worker": address, "pid": os.getpid(), "model_loads": _LOADS.get((config.model, config.device, config.dtype), 0)}


@contextmanager
def _tile_record(job: TileJob, config: BatchConfig) -> Iterator[dict]:
    """A record of one task: time, worker, warnings; an exception becomes ``failed`` + reason.

    A model that cannot be loaded is not the tile's fault: it propagates and stops the run.
    """
    from .model.loading import ModelNotFoundError

    record = {"input": str(job.input), "output": str(job.output), "status": "done"}
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield record
        except ModelNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001 - any tile's failure is recorded, the batch goes on
            record.update(status="failed", reason=_one_line(e))
    record["seconds"] = round(time.perf_counter() - start, 3)
    record["warnings"] = sorted({str(w.message) for w in caught if not _noise(w)})
    record.update(_worker_info(config))


def _noise(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, (DeprecationWarning, FutureWarning)) or "NotGeoreferenced" in w.category.__name__


def _one_line(e: BaseException) -> str:
    from .geo.raster_io import ImageReadError

    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return text if isinstance(e, ImageReadError) else f"{type(e).__name__}: {text}".rstrip(": ")


def segment_tile(job: TileJob, config: BatchConfig) -> dict:
    """Dask task: read, segment and write one tile (per-tile prototypes, one pass)."""
    from .engine import segment
    from .geo.raster_io import read_image

    with _tile_record(job, config) as record:
        model = worker_model(config)
        image, geo = read_image(job.input)
        result = segment(image, list(config.classes), model, config.params)
        _write_output(job, result.labels, result.classes, geo, _metadata(job, config, result.metadata(), geo))
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
    """Dask task, shared pass 2: labels from the kept features and the shared prototypes."""
    from .geo.raster_io import GeoInfo

    with _tile_record(job, config) as record:
        cached = _read_cache(job.cache(), with_features=True)
        if cached is None:
            raise RuntimeError("its features from pass 1 are missing; rerun to redo it")
        meta = json.loads(cached["meta"])
        grid = np.einsum("kc,chw->khw", protos, cached["features"].astype(np.float32))
        labels = shared_labels(grid, _scaled_shape(cached["shape"], config.params.scale))
        labels = _to_input_grid(labels, tuple(cached["shape"]))
        classes = [ClassSpec.from_dict(c) for c in meta["classes"]]
        meta["batch"]["prototype_tiles"] = n_tiles
        geo = GeoInfo.from_dict(meta["georeference"])
        _write_output(job, labels, classes, geo, meta)
        job.cache().unlink(missing_ok=True)
    return record


def _metadata(job: TileJob, config: BatchConfig, result_meta: dict, geo) -> dict:
    return dict(result_meta, image=str(job.input), georeference=geo.to_dict(),
                batch={"fingerprint": job.fingerprint, "shared_prototypes": config.shared})


def _write_output(job: TileJob, labels, classes, geo, metadata: dict) -> None:
    """Labels then sidecar, each atomic; the old sidecar goes first so a crash leaves no match."""
    from .geo.raster_io import write_labels, write_sidecar

    job.sidecar.unlink(missing_ok=True)
    write_labels(job.output, labels, classes, geo, metadata)
    write_sidecar(job.output, metadata)


def _compute_cache(job: TileJob, config: BatchConfig) -> dict:
    from .engine import segment
    from .geo.atomic import atomic_output
    from .geo.raster_io import read_image

    model = worker_model(config)
    image, geo = read_image(job.input)
    params = config.params.replace(prototypes="tile")
    result = segment(image, list(config.classes), model, params, keep_features=True)
    num, den = _prototype_sums(result.attention, result.features)
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


def _prototype_sums(attention: np.ndarray, features: np.ndarray, rows: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Σ_p A_k(p) f̂(p) (K, C) and Σ_p A_k(p) (K,) over the image's grid, a band of rows at a time."""
    k, c = attention.shape[0], features.shape[0]
    num = np.zeros((k, c), np.float64)
    for r in range(0, attention.shape[1], rows):
        a = attention[:, r : r + rows].reshape(k, -1).astype(np.float32)
        f = features[:, r : r + rows].reshape(c, -1).astype(np.float32)
        num += a @ f.T
    return num.astype(np.float32), attention.reshape(k, -1).sum(1, dtype=np.float64).astype(np.float32)


def shared_labels(grid_scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Argmax over K of (K, gh, gw) grid scores resized bilinearly ×16, cropped to ``shape``:
    the engine's assignment, band by band (:func:`maskdiffusion.core.refine.assign`)."""
    from .core.refine import assign

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


# --- on the driver -------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """Every tile's record (``done``, ``skipped``, ``failed``, ``pending``) and the run's timing."""

    out_dir: Path
    config: BatchConfig
    tiles: dict[str, dict] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    _saved: float = 0.0

    def set(self, job: TileJob, **record) -> None:
        kept = {k: v for k, v in record.items() if k not in ("num", "den") and v is not None and v != []}
        self.tiles[job.stem] = {"input": str(job.input), "output": str(job.output), **kept}

    def count(self, status: str) -> int:
        return sum(1 for t in self.tiles.values() if t["status"] == status)

    def failed(self) -> list[tuple[str, str]]:
        return [(Path(t["input"]).name, t.get("reason", "")) for t in self.tiles.values() if t["status"] == "failed"]

    def save(self, every: float = 0.0) -> None:
        """Write ``batch_status.json`` atomically (at most once per ``every`` seconds)."""
        from .geo.atomic import write_json

        if time.time() - self._saved < every:
            return
        self._saved = time.time()
        write_json(self.out_dir / STATUS_FILE, {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.started)),
            "seconds": round(time.time() - self.started, 1),
            "settings": self.config.identity(),
            "summary": {s: self.count(s) for s in ("done", "skipped", "failed", "pending")},
            "tiles": self.tiles,
        })

    def summary(self) -> str:
        elapsed = time.time() - self.started
        done = self.count("done")
        rate = f", {60 * done / elapsed:.1f} tiles/min" if done and elapsed > 0 else ""
        lines = [
            f"{len(self.tiles)} tiles in {elapsed:.1f} s{rate}: {done} done, {self.count('skipped')} skipped "
            f"(finished before), {self.count('failed')} failed"
            + (f", {self.count('pending')} not reached" if self.count("pending") else "")
        ]
        lines += [f"  failed {name}: {reason}" for name, reason in self.failed()]
        warned = [w for t in self.tiles.values() for w in t.get("warnings", [])]
        if warned:
            lines.append(f"  {len(warned)} warning(s), e.g. {warned[0]}")
        lines.append(f"status: {self.out_dir / STATUS_FILE}")
        return "\n".join(lines)


def process(client, jobs: Sequence[TileJob], config: BatchConfig, report: BatchReport | None = None,
            progress: bool = True, overwrite: bool = False) -> BatchReport:
    """Run ``jobs`` on ``client``'s cluster: skip finished ones, redo the rest, record everything."""
    jobs = list(jobs)
    out_dir = jobs[0].output.parent if jobs else Path(".")
    report = report or BatchReport(out_dir, config)
    _remove_temporaries(jobs)
    if overwrite:
        _forget_shared_work(jobs)
    pending = []
    for job in jobs:
        if not overwrite and is_finished(job):
            report.set(job, status="skipped")
        else:
            report.set(job, status="pending")
            pending.append(job)
    report.save()
    try:
        if config.shared:
            _run_shared(client, jobs, pending, config, report, progress)
        elif pending:
            _gather(client, {client.submit(segment_tile, j, config, key=_key("segment", j), pure=False): j
                             for j in pending}, report, progress, "segment")
    finally:
        report.save()
    return report


def _forget_shared_work(jobs: Sequence[TileJob]) -> None:
    """For ``--overwrite``: kept features and saved prototypes are not reused either."""
    for job in jobs:
        job.cache().unlink(missing_ok=True)
        (job.output.parent / PROTOTYPES_FILE).unlink(missing_ok=True)


def _key(stage: str, job: TileJob) -> str:
    return f"maskdiffusion-{stage}-{job.stem}-{job.fingerprint[:12]}-{os.urandom(4).hex()}"


def _gather(client, futures: dict, report: BatchReport, progress: bool, stage: str,
            on_done: Callable[[TileJob, dict], None] | None = None) -> None:
    """Collect tasks as they finish, with a progress bar; a lost worker fails only its tile."""
    from distributed import as_completed
    from tqdm import tqdm

    from .model.loading import ModelNotFoundError

    with tqdm(total=len(futures), unit="tile", desc=stage, file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    record = fut.result()
                except ModelNotFoundError:
                    raise
                except Exception as e:  # noqa: BLE001 - e.g. KilledWorker: the tile failed, not the run
                    record = {"status": "failed", "reason": _one_line(e)}
                report.set(job, **record)
                if on_done is not None and record["status"] == "done":
                    on_done(job, record)
                if record["status"] == "failed":
                    bar.write(f"failed {job.input.name}: {record.get('reason', '')}", file=sys.stderr)
                bar.update()
                report.save(every=2.0)
        finally:
            client.cancel(list(futures))


def _run_shared(client, jobs, pending, config: BatchConfig, report: BatchReport, progress: bool) -> None:
    """Shared prototypes: pass 1 (features and sums), reduce on the driver, pass 2 (labels).

    Prototypes saved by an earlier run over the same inputs and settings are reused, so a
    resumed run only computes the features of its unfinished tiles.
    """
    if not pending:
        return
    path = pending[0].output.parent / PROTOTYPES_FILE
    run_id = _digest(sorted(j.fingerprint for j in jobs))
    saved = _load_prototypes(path, run_id)
    sums: list[tuple[np.ndarray, np.ndarray]] = []
    kept: set[str] = set()
    todo = {j.stem for j in pending}

    def keep(job: TileJob, record: dict) -> None:
        if job.stem in todo:
            kept.add(job.stem)
            report.set(job, status="pending")
        else:
            job.cache().unlink(missing_ok=True)
            report.set(job, status="skipped")
        sums.append((record["num"], record["den"]))

    first = pending if saved is not None else jobs
    _gather(client, {client.submit(tile_features, j, config, key=_key("features", j), pure=False): j for j in first},
            report, progress, "features", on_done=keep)
    if saved is None:
        if not sums:
            return
        protos = sum(n for n, _ in sums) / np.maximum(sum(d for _, d in sums), 1e-12)[:, None]
        saved = protos.astype(np.float32), len(sums)
        _save_prototypes(path, saved[0], run_id, len(sums), config)
    protos, n_tiles = saved
    second = [j for j in pending if j.stem in kept]
    shared = client.scatter(protos, broadcast=True)
    _gather(client, {client.submit(assign_tile, j, config, shared, n_tiles, key=_key("assign", j), pure=False): j
                     for j in second}, report, progress, "assign")
    _remove_empty_cache(path.parent)


def _save_prototypes(path: Path, protos: np.ndarray, run_id: str, n_tiles: int, config: BatchConfig) -> None:
    """``batch_prototypes.npz``: c_k (K, C), the run it belongs to, how many tiles made it."""
    from .geo.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, prototypes=protos, run=np.array(run_id), n_tiles=np.array(n_tiles),
                 classes=np.array([c.name for c in config.classes]))


def _load_prototypes(path: Path, run_id: str) -> tuple[np.ndarray, int] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return (z["prototypes"], int(z["n_tiles"])) if str(z["run"]) == run_id else None
    except (OSError, ValueError, KeyError):
        return None


def _remove_empty_cache(out_dir: Path) -> None:
    try:
        (out_dir / CACHE_DIR).rmdir()
    except OSError:
        pass


# --- the command ---------------------------------------------------------------------------------


def add_batch_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``batch`` command on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "batch", help="segment many images on a Dask cluster (resumable)",
        description="Segment every input image into OUT_DIR/<name>.tif (+ <name>.classes.json) on Dask: a local "
                    "cluster by default, or an existing one with --scheduler. A rerun skips finished tiles and redoes "
                    "the rest; failures are recorded in OUT_DIR/batch_status.json and the others go on. "
                    "Exit status 0 if every tile is done, 1 if some failed, 2 for bad input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their .tif/.tiff/.png/.jpg files) or quoted glob patterns ('tiles/*_RGB.tif')")
    p.add_argument("--out-dir", type=Path, required=True, help="output folder (created if missing)")
    add_class_arguments(p)
    add_model_arguments(p)
    g = p.add_argument_group("cluster")
    g.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the local cluster, each with its own model (default 1)")
    g.add_argument("--scheduler", metavar="ADDRESS", help="use an existing Dask cluster, e.g. tcp://host:8786")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads per worker (default: CPU cores / workers on a local cluster; "
                        "unchanged on an existing one)")
    p.add_argument("--shared-prototypes", action="store_true",
                   help="one set of class prototypes over all inputs, so a class means the same on every tile "
                        "(two passes; features are kept in OUT_DIR/.maskdiffusion-cache in between)")
    p.add_argument("--overwrite", action="store_true", help="redo every tile, even finished ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (failed tiles are still named)")
    add_param_arguments(p)
    p.set_defaults(func=run_batch)
    return p


def config_from_args(args) -> BatchConfig:
    """The run's settings from parsed arguments; bad ones raise before any worker starts."""
    if args.shared_prototypes and args.unsupervised:
        raise BatchInputError("--shared-prototypes needs class names; it does not apply to --unsupervised")
    try:
        classes = tuple(classes_from_args(args))
    except UsageError as e:
        raise BatchInputError(str(e)) from None
    params = params_from_args(args)
    model = _model_source(args.model)
    if model is not None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    threads = args.threads
    if threads is None and not args.scheduler:
        threads = max(1, (os.cpu_count() or 1) // (args.workers or 1))
    return BatchConfig(classes, params, model, args.device, args.dtype, threads, args.shared_prototypes)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int = 1) -> Iterator:
    """A client of the cluster at ``scheduler``, or of a local cluster of ``workers`` processes.

    The local cluster has one thread per worker (torch parallelises inside), no dashboard, quiet
    logs (failures are recorded per tile), and is shut down on exit, Ctrl-C included.
    """
    import logging

    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise BatchInputError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        with client:
            yield client
        return
    with _sigint_ignored():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.CRITICAL)
    with cluster, Client(cluster) as client:
        yield client


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Processes started meanwhile ignore SIGINT: Ctrl-C stops only the driver, which shuts them down."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run_batch(args) -> int:
    """Run ``batch``: 0 if every tile is done, 1 if some failed, 130 if interrupted."""
    if args.workers is not None and args.workers < 1:
        raise BatchInputError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.scheduler:
        raise BatchInputError("--workers starts a local cluster; with --scheduler the cluster has its own workers")
    config = config_from_args(args)
    out_dir = args.out_dir.expanduser().resolve()
    inputs = expand_inputs(args.inputs, exclude=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(inputs, out_dir, config)
    report = BatchReport(out_dir, config)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    todo = [j for j in jobs if args.overwrite or not is_finished(j)]
    stale = sum(j.output.exists() or j.sidecar.exists() for j in todo)
    note = " (--overwrite)" if args.overwrite else f" ({stale} replacing outputs of other settings or of an unfinished run)"
    say(f"maskdiffusion batch: {len(jobs)} input(s), {len(jobs) - len(todo)} finished before, {len(todo)} to do"
        + (note if stale else ""))
    try:
        if todo:
            with dask_client(args.scheduler, args.workers or 1) as client:
                process(client, jobs, config, report, progress=not args.quiet, overwrite=args.overwrite)
        else:
            process(None, jobs, config, report, progress=False)
    except KeyboardInterrupt:
        for job in jobs:
            if report.tiles.get(job.stem, {}).get("status") == "pending" and is_finished(job):
                report.set(job, status="done")
        report.save()
        say(report.summary())
        say("interrupted: finished tiles are kept; rerun the same command to go on")
        return EXIT_INTERRUPTED
    say(report.summary())
    return EXIT_ERROR if report.count("failed") or report.count("pending") else EXIT_OK

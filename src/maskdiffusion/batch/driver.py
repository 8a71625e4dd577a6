"""The driver side of a batch run: send the jobs to a Dask cluster, gather and record results.

The driver sends paths, never pixels. ``batch_status.json`` records every tile (done, skipped,
failed with its reason, pending) and is rewritten atomically as tiles finish. With shared
prototypes it runs two passes and reduces the prototype sums in between.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .jobs import (
    CACHE_DIR,
    PROTOTYPES_FILE,
    STATUS_FILE,
    BatchConfig,
    BatchInputError,
    TileJob,
    check_status_file,
    digest,
    foreign_output,
    is_finished,
    previous_records,
    remove_temporaries,
)
from .tasks import assign_tile, one_line, segment_tile, tile_features

__all__ = ["BatchReport", "dask_client", "process"]

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
        from ..geo.atomic import write_json

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
    """Run ``jobs`` on ``client``'s cluster: skip finished ones, redo the rest, record everything.

    Without ``overwrite`` a tile whose output path holds a file batch did not write fails (with
    the reason) and the file is left alone; a ``batch_status.json`` batch did not write stops
    the run before it starts (:func:`~.jobs.check_status_file`).
    """
    jobs = list(jobs)
    out_dir = jobs[0].output.parent if jobs else Path(".")
    check_status_file(out_dir, overwrite)
    report = report or BatchReport(out_dir, config)
    previous = previous_records(out_dir)
    remove_temporaries(jobs)
    if overwrite:
        _forget_shared_work(jobs)
    pending = []
    for job in jobs:
        written = previous.get(job.stem, {}).get("written")
        if overwrite:
            foreign = None
        elif is_finished(job):
            report.set(job, status="skipped", written=written)
            continue
        else:
            foreign = foreign_output(job, previous.get(job.stem))
        if foreign is not None:
            reason = f"{foreign} exists and was not written by maskdiffusion batch; pass --overwrite to replace it"
            report.set(job, status="failed", reason=reason)
            print(f"failed {job.input.name}: {reason}", file=sys.stderr)
            continue
        report.set(job, status="pending", written=written)
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

    from ..model.loading import ModelNotFoundError

    with tqdm(total=len(futures), unit="tile", desc=stage, file=sys.stderr, disable=not progress,
              dynamic_ncols=True) as bar:
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    record = fut.result()
                except ModelNotFoundError:
                    raise
                except Exception as e:
                    record = {"status": "failed", "reason": one_line(e)}
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
    run_id = digest(sorted(j.fingerprint for j in jobs))
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
            if report.tiles[job.stem]["status"] != "failed":
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
    from ..geo.atomic import atomic_output

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

"""Batch throughput on Dask: tiles per minute for 512² tiles with the full-size random SD 1.5, 1 worker vs 2.

For each worker count N: a local cluster of N single-threaded worker processes, torch running
``cores // N`` threads in each; the model is loaded on every worker first (timed apart), then a
batch of fresh 512×512 tiles (one model tile each, six Potsdam classes) runs through
:func:`maskdiffusion.batch.process`, exactly what ``maskdiffusion batch`` does. The scaling
ratio is tiles/min with 2 workers over tiles/min with 1.

The random SD 1.5 folder (about 4 GB) is built once in the user cache (``random:sd15``).
Prints one JSON object. Usage:
    python benchmarks/bench_batch_scaling.py [--tiles 6] [--workers 1,2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def make_tiles(folder: Path, n: int, size: int) -> list[Path]:
    from maskdiffusion.geo.synthetic import write_potsdam_like

    return [write_potsdam_like(folder, f"top_potsdam_9_{i}", size=size, seed=i)["image"] for i in range(n)]


def run(n_workers: int, inputs: list[Path], model: str, device: str, cores: int) -> dict:
    """One configuration: cluster start, model load on every worker, then the timed batch."""
    from distributed import Client, LocalCluster

    from maskdiffusion.batch import BatchConfig, plan_jobs, process, warm_up
    from maskdiffusion.core.classes import preset_classes
    from maskdiffusion.core.params import SegmentParams

    threads = max(1, cores // n_workers)
    config = BatchConfig(tuple(preset_classes("potsdam6")), SegmentParams(), model, device, None, threads)
    t0 = time.perf_counter()
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        t1 = time.perf_counter()
        loads = warm_up(client, config)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="bench-batch-") as out:
            jobs = plan_jobs(inputs, Path(out), config)
            report = process(client, jobs, config, progress=False)
            t3 = time.perf_counter()
    done = report.count("done")
    per_tile = [t["seconds"] for t in report.tiles.values() if "seconds" in t]
    return {
        "workers": n_workers,
        "torch_threads_per_worker": threads,
        "tiles_done": done,
        "tiles_failed": report.count("failed"),
        "cluster_start_s": round(t1 - t0, 1),
        "model_load_s": round(t2 - t1, 1),
        "batch_s": round(t3 - t2, 1),
        "tiles_per_min": round(60 * done / (t3 - t2), 2),
        "mean_task_s": round(sum(per_tile) / max(1, len(per_tile)), 1),
        "model_loads_per_worker": sorted(loads.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=6)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="random:sd15", help="model source (default: random SD 1.5 sizes, cached)")
    args = p.parse_args()

    from maskdiffusion.model.random_sd import random_model_folder

    model = str(random_model_folder(args.model)) if args.model.startswith("random:") else args.model
    cores = os.cpu_count() or 1
    result = {
        "benchmark": "batch_scaling",
        "model": args.model,
        "tile_px": args.size,
        "tiles": args.tiles,
        "device": args.device,
        "cpu_cores": cores,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-tiles-") as folder:
        inputs = make_tiles(Path(folder), args.tiles, args.size)
        for n in (int(w) for w in args.workers.split(",")):
            result["runs"].append(run(n, inputs, model, args.device, cores))
            print(f"{n} worker(s): {result['runs'][-1]}", file=sys.stderr)
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    rates = {r["workers"]: r["tiles_per_min"] for r in result["runs"]}
    if 1 in rates and 2 in rates and rates[1]:
        result["scaling_ratio_2_vs_1"] = round(rates[2] / rates[1], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

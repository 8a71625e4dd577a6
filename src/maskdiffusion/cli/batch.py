"""``maskdiffusion batch``: many images on a Dask cluster, resumably (:mod:`maskdiffusion.batch`).

Exit status 0 when every tile is done, 1 when some failed, 2 for bad input, 130 after Ctrl-C
(finished tiles are kept).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..batch import (
    BatchConfig,
    BatchInputError,
    BatchReport,
    check_out_dir,
    check_status_file,
    dask_client,
    expand_inputs,
    foreign_output,
    is_finished,
    model_key,
    plan_jobs,
    previous_records,
    process,
)
from ..geo.atomic import make_folder
from .arguments import (
    add_class_arguments,
    add_model_arguments,
    add_param_arguments,
    classes_from_args,
    model_source,
    params_from_args,
)

__all__ = ["add_parser", "config_from_args", "run"]


def add_parser(commands) -> None:
    p = commands.add_parser(
        "batch", help="segment many images on a Dask cluster (resumable)",
        description="Segment every input image into OUT_DIR/<name>.tif (+ <name>.classes.json) on Dask: a local "
                    "cluster by default, or an existing one with --scheduler. A rerun skips finished tiles and redoes "
                    "the rest; failures are recorded in OUT_DIR/batch_status.json and the others go on. "
                    "Exit status 0 if every tile is done, 1 if some failed, 2 for bad input.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (their .tif/.tiff/.png/.jpg files) or quoted glob patterns "
                        "('tiles/*_RGB.tif')")
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
    p.add_argument("--save-refine", action="store_true",
                   help="also save what Refine needs beside each result (OUT_DIR/<name>.refine.npz: reduced features, "
                        "class maps, draft scores, compressed), so a draft is refined, and corrected in a dataset, "
                        "with no model")
    p.add_argument("--overwrite", action="store_true", help="redo every tile, even finished ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary (failed tiles are still named)")
    add_param_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args) -> BatchConfig:
    """The run's settings from parsed arguments; bad ones raise before any worker starts."""
    if args.shared_prototypes and args.unsupervised:
        raise BatchInputError("--shared-prototypes needs class names; it does not apply to --unsupervised")
    if args.save_refine and (args.shared_prototypes or args.unsupervised):
        raise BatchInputError("--save-refine works with per-tile class prototypes only, not with "
                              + ("--shared-prototypes" if args.shared_prototypes else "--unsupervised"))
    classes = tuple(classes_from_args(args))
    params = params_from_args(args)
    model = model_key(model_source(args.model))
    threads = args.threads
    if threads is None and not args.scheduler:
        threads = max(1, (os.cpu_count() or 1) // (args.workers or 1))
    return BatchConfig(classes, params, model, args.device, args.dtype, threads, args.shared_prototypes,
                       args.save_refine)


def run(args) -> int:
    """Run ``batch``: 0 if every tile is done, 1 if some failed, 130 if interrupted."""
    if args.workers is not None and args.workers < 1:
        raise BatchInputError(f"--workers must be at least 1, got {args.workers}")
    if args.workers is not None and args.scheduler:
        raise BatchInputError("--workers starts a local cluster; with --scheduler the cluster has its own workers")
    config = config_from_args(args)
    out_dir = args.out_dir.expanduser().resolve()
    check_out_dir(args.inputs, out_dir)
    inputs = expand_inputs(args.inputs, exclude=out_dir)
    make_folder(out_dir)
    check_status_file(out_dir, args.overwrite)
    jobs = plan_jobs(inputs, out_dir, config)
    report = BatchReport(out_dir, config)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    todo = [j for j in jobs if args.overwrite or not is_finished(j)]
    previous = previous_records(out_dir)
    refused = [] if args.overwrite else [j for j in todo if foreign_output(j, previous.get(j.stem)) is not None]
    stale = sum(j.output.exists() or j.sidecar.exists() for j in todo if j not in refused)
    note = (" (--overwrite)" if args.overwrite
            else f" ({stale} replacing outputs of other settings or of an unfinished run)")
    say(f"maskdiffusion batch: {len(jobs)} input(s), {len(jobs) - len(todo)} finished before, {len(todo)} to do"
        + (note if stale else "") + (f", {len(refused)} refused (files batch did not write)" if refused else ""))
    try:
        if len(todo) > len(refused):
            with dask_client(args.scheduler, args.workers or 1) as client:
                process(client, jobs, config, report, progress=not args.quiet, overwrite=args.overwrite)
        else:
            process(None, jobs, config, report, progress=False)
    except KeyboardInterrupt as stop:
        for job in jobs:
            if report.tiles.get(job.stem, {}).get("status") == "pending" and is_finished(job):
                report.set(job, status="done")
        report.save()
        say(report.summary())
        print(f"{str(stop) or 'interrupted'}: finished tiles are kept; rerun the same command to go on",
              file=sys.stderr)
        return getattr(stop, "exit_code", 130)
    say(report.summary())
    return 1 if report.count("failed") or report.count("pending") else 0

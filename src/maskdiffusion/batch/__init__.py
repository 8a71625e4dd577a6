"""Batch runs: segment many image files on a Dask cluster, resumably (the library behind
``maskdiffusion batch``).

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

The package is split by side: :mod:`.jobs` (what to do, what is finished), :mod:`.tasks` (the
workers) and :mod:`.driver` (the cluster, the status file).
"""

from .driver import BatchReport, dask_client, process
from .jobs import (
    CACHE_DIR,
    IMAGE_SUFFIXES,
    PROTOTYPES_FILE,
    STATUS_FILE,
    BatchConfig,
    BatchInputError,
    TileJob,
    check_out_dir,
    check_status_file,
    expand_inputs,
    foreign_output,
    is_finished,
    model_key,
    plan_jobs,
    previous_records,
)
from .tasks import assign_tile, segment_tile, shared_labels, tile_features, warm_up, worker_model

__all__ = [
    "CACHE_DIR",
    "IMAGE_SUFFIXES",
    "PROTOTYPES_FILE",
    "STATUS_FILE",
    "BatchConfig",
    "BatchInputError",
    "BatchReport",
    "TileJob",
    "assign_tile",
    "check_out_dir",
    "check_status_file",
    "dask_client",
    "expand_inputs",
    "foreign_output",
    "is_finished",
    "model_key",
    "plan_jobs",
    "previous_records",
    "process",
    "segment_tile",
    "shared_labels",
    "tile_features",
    "warm_up",
    "worker_model",
]

"""What a batch run has to do: its settings, one job per input, and which outputs are finished.

An output counts as finished only when the label raster and its sidecar both exist and carry
the fingerprint of this run's settings and of the input file (size and modification time).
A file at an output path that batch did not write (no fingerprint, not the file the status
records) is never replaced without ``--overwrite``; nor is a ``batch_status.json`` it did not write.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.classes import ClassSpec
from ..core.params import DEFAULT_MODEL, SegmentParams
from ..errors import BadInputError

__all__ = ["BatchConfig", "BatchInputError", "TileJob", "check_out_dir", "check_status_file", "expand_inputs",
           "finished_output", "foreign_output", "is_finished", "model_key", "plan_jobs", "previous_records",
           "written_files",
           "CACHE_DIR", "IMAGE_SUFFIXES", "PROTOTYPES_FILE", "STATUS_FILE"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STATUS_FILE = "batch_status.json"
PROTOTYPES_FILE = "batch_prototypes.npz"
CACHE_DIR = ".maskdiffusion-cache"
_GLOB_CHARS = re.compile(r"[*?\[]")
_CACHED = re.compile(r"^(?P<stem>.+)\.[0-9a-f]{16}\.npz$")

class BatchInputError(BadInputError):
    """Bad batch input (no such input, clashing names, options that do not go together): exit 2."""


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
    save_refine: bool = False

    def identity(self) -> dict:
        """What changes the outputs (not the threads, nor the backend, exact to fp32): hashed
        into every tile's fingerprint."""
        parameters = {k: v for k, v in self.params.to_dict().items() if k != "backend"}
        identity = {
            "classes": [c.to_dict() for c in self.classes],
            "parameters": parameters,
            "model": self.model or DEFAULT_MODEL,
            "device": self.device,
            "dtype": self.dtype,
            "shared_prototypes": self.shared,
        }
        return {**identity, "save_refine": True} if self.save_refine else identity


def model_key(model: str | None) -> str | None:
    """The model as a run records it: a local file or folder by its absolute path (so runs
    started from other folders match), anything else (a hub id, ``random:tiny``) as given."""
    if model is not None and Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve())
    return model


@dataclass(frozen=True)
class TileJob:
    """One input file, where its output goes, and the fingerprint a finished output carries."""

    input: Path
    output: Path
    fingerprint: str
    save_refine: bool = False

    @property
    def stem(self) -> str:
        return self.output.stem

    @property
    def sidecar(self) -> Path:
        return self.output.with_suffix(".classes.json")

    @property
    def refine(self) -> Path:
        """What refinement needs of the tile (``--save-refine``), :mod:`maskdiffusion.geo.refine_file`."""
        return self.output.with_suffix(".refine.npz")

    @property
    def files(self) -> tuple[Path, ...]:
        """The files a finished tile has."""
        return (self.output, self.sidecar) + ((self.refine,) if self.save_refine else ())

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


def check_out_dir(items: Sequence[str | os.PathLike], out_dir: Path, name: str = "--out-dir") -> None:
    """Refuse an output folder that is, or contains, a folder the inputs come from: its outputs
    (``<stem>.tif``) would replace input files there, and a rerun would take them for inputs.
    ``name`` is what the message calls the output folder."""
    out_dir = out_dir.resolve()
    for item in items:
        folder = _input_folder(os.fspath(item)).resolve()
        if folder == out_dir or out_dir in folder.parents:
            raise BatchInputError(f"{name} {out_dir} is or contains the input folder {folder}: the outputs would "
                                  f"replace input files there; choose another {name}")


def _input_folder(text: str) -> Path:
    """The folder an input item takes files from: the folder itself, a file's, a pattern's fixed part."""
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _GLOB_CHARS.search(text):
        return path.parent
    fixed = []
    for part in path.parts:
        if _GLOB_CHARS.search(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _input_signature(path: Path) -> dict:
    st = path.stat()
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def digest(data) -> str:
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
        TileJob(path, out_dir / f"{stem}.tif", digest({"run": run, "input": signatures[stem]}), config.save_refine)
        for stem, path in by_stem.items()
    ]


def is_finished(job: TileJob) -> bool:
    """Every file of the tile readable, and made from this input with this run's settings."""
    return all(_stored_fingerprint(path) == job.fingerprint for path in job.files)


def finished_output(out_dir: Path, image: Path) -> tuple[TileJob, dict] | None:
    """The tile a past run finished for ``image`` in ``out_dir`` and the settings it was made
    with (``batch_status.json``'s ``settings``), or ``None``.

    Finished means what a rerun with those settings would skip: recorded done (or skipped)
    in the status file, every file present and carrying the fingerprint of those settings and
    of ``image`` as it is now (size, modification time).
    """
    try:
        status = json.loads((out_dir / STATUS_FILE).read_text(encoding="utf-8"))
        settings, tiles = status["settings"], status["tiles"]
        record = tiles[image.stem]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(record, dict) or record.get("status") not in ("done", "skipped") or not image.is_file():
        return None
    if Path(record.get("input", "")).resolve() != image.resolve():
        return None
    run = dict(settings)
    if settings.get("shared_prototypes"):
        try:
            run["tile_set"] = sorted((_input_signature(Path(t["input"])) for t in tiles.values()),
                                     key=lambda s: s["name"])
        except (OSError, KeyError, TypeError):
            return None
    job = TileJob(image, out_dir / f"{image.stem}.tif", digest({"run": run, "input": _input_signature(image)}),
                  bool(settings.get("save_refine")))
    return (job, settings) if is_finished(job) else None


def foreign_output(job: TileJob, record: dict | None = None) -> Path | None:
    """The first of the job's output files that exists and was not written by batch, else ``None``.

    Batch's own files carry a batch fingerprint (any run's: other settings are redone), or are
    the very files ``record`` (the tile's entry in the last ``batch_status.json``) says it
    wrote, same size and modification time (a file of ours that no longer reads, say).
    """
    written = (record or {}).get("written") or {}
    for path in job.files:
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_file() and _stored_fingerprint(path) is not None:
            continue
        if path.is_file() and written.get(path.name) == _file_stamp(path):
            continue
        return path
    return None


def _read_status(out_dir: Path) -> dict | None:
    """``out_dir/batch_status.json`` if it is one batch wrote (its settings and tiles), else ``None``."""
    try:
        status = json.loads((out_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = isinstance(status, dict) and all(isinstance(status.get(k), dict) for k in ("tiles", "settings"))
    return status if ours else None


def previous_records(out_dir: Path) -> dict[str, dict]:
    """The tiles of the last ``batch_status.json`` in ``out_dir`` ({} if there is none or it is unreadable)."""
    status = _read_status(out_dir)
    return status["tiles"] if status is not None else {}


def check_status_file(out_dir: Path, overwrite: bool = False) -> None:
    """Refuse a run whose status file would replace a ``batch_status.json`` batch did not write
    (unless ``overwrite``), or a folder of that name: :class:`BatchInputError`, before any work."""
    path = out_dir / STATUS_FILE
    if path.is_dir():
        raise BatchInputError(f"{path} is a folder; batch records its run in a file of that name: move it or choose "
                              "another --out-dir")
    if overwrite or not (path.exists() or path.is_symlink()) or _read_status(out_dir) is not None:
        return
    raise BatchInputError(f"{path} exists and was not written by maskdiffusion batch, which records its run there: "
                          "move it, choose another --out-dir or pass --overwrite to replace it")


def written_files(job: TileJob) -> dict[str, list[int]]:
    """Size and modification time of the job's outputs, as the status file records them."""
    return {p.name: _file_stamp(p) for p in job.files if p.is_file()}


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _stored_fingerprint(path: Path) -> str | None:
    """The batch fingerprint a sidecar, a label raster's tags or a refinement file carry (``None``
    if none or unreadable)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from ..geo.refine_file import RefineFileError, read_refine_state

    try:
        if path.suffix.lower() == ".json":
            metadata = json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix.lower() == ".npz":
            metadata = read_refine_state(path)[1]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    metadata = json.loads(src.tags().get("MASKDIFFUSION_METADATA", "{}"))
    except (OSError, ValueError, RasterioError, RefineFileError):
        return None
    batch = metadata.get("batch") if isinstance(metadata, dict) else None
    return batch.get("fingerprint") if isinstance(batch, dict) else None


def remove_temporaries(jobs: Sequence[TileJob]) -> None:
    """Delete what interrupted runs left: temporary files of atomic writes, features of old settings."""
    from ..geo.atomic import remove_stale_temporaries

    stems = {job.stem for job in jobs}
    current = {job.cache().name for job in jobs}
    for job in jobs:
        for path in (job.output, job.sidecar, job.refine):
            remove_stale_temporaries(path)
    for folder in {job.output.parent for job in jobs}:
        cache = folder / CACHE_DIR
        for p in cache.iterdir() if cache.is_dir() else ():
            m = _CACHED.match(p.name)
            if p.name.endswith(".tmp.npz") or (m and m.group("stem") in stems and p.name not in current):
                p.unlink(missing_ok=True)

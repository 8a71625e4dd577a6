"""What a batch run has to do: its settings, one job per input, and which outputs are finished.

An output counts as finished only when the label raster and its sidecar both exist and carry
the fingerprint of this run's settings and of the input file (size and modification time).
A file at an output path that batch did not write (no fingerprint, not the file the status
records) is never replaced without ``--overwrite``.
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

__all__ = ["BatchConfig", "BatchInputError", "TileJob", "check_out_dir", "expand_inputs", "foreign_output",
           "is_finished", "plan_jobs", "previous_records", "written_files",
           "CACHE_DIR", "IMAGE_SUFFIXES", "PROTOTYPES_FILE", "STATUS_FILE"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
STATUS_FILE = "batch_status.json"
PROTOTYPES_FILE = "batch_prototypes.npz"
CACHE_DIR = ".maskdiffusion-cache"
_GLOB_CHARS = re.compile(r"[*?\[]")
_TEMPORARY = re.compile(r"^\.(?P<stem>.+?)(\.classes)?\.[0-9a-f]{12}\.tmp\.(tif|json)$")
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

    def identity(self) -> dict:
        """What changes the labels (not the threads, nor the backend, exact to fp32): hashed
        into every tile's fingerprint."""
        parameters = {k: v for k, v in self.params.to_dict().items() if k != "backend"}
        return {
            "classes": [c.to_dict() for c in self.classes],
            "parameters": parameters,
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


def check_out_dir(items: Sequence[str | os.PathLike], out_dir: Path) -> None:
    """Refuse an output folder that is, or contains, a folder the inputs come from: its outputs
    (``<stem>.tif``) would replace input files there, and a rerun would take them for inputs."""
    out_dir = out_dir.resolve()
    for item in items:
        folder = _input_folder(os.fspath(item)).resolve()
        if folder == out_dir or out_dir in folder.parents:
            raise BatchInputError(f"--out-dir {out_dir} is or contains the input folder {folder}: the outputs would "
                                  "replace input files there; choose another --out-dir")


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
        TileJob(path, out_dir / f"{stem}.tif", digest({"run": run, "input": signatures[stem]}))
        for stem, path in by_stem.items()
    ]


def is_finished(job: TileJob) -> bool:
    """Output and sidecar both readable, and both made from this input with this run's settings."""
    return _stored_fingerprint(job.sidecar) == job.fingerprint == _stored_fingerprint(job.output)


def foreign_output(job: TileJob, record: dict | None = None) -> Path | None:
    """The first of the job's output files that exists and was not written by batch, else ``None``.

    Batch's own files carry a batch fingerprint (any run's: other settings are redone), or are
    the very files ``record`` (the tile's entry in the last ``batch_status.json``) says it
    wrote, same size and modification time (a file of ours that no longer reads, say).
    """
    written = (record or {}).get("written") or {}
    for path in (job.output, job.sidecar):
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_file() and _stored_fingerprint(path) is not None:
            continue
        if path.is_file() and written.get(path.name) == _file_stamp(path):
            continue
        return path
    return None


def previous_records(out_dir: Path) -> dict[str, dict]:
    """The tiles of the last ``batch_status.json`` in ``out_dir`` ({} if there is none or it is unreadable)."""
    try:
        tiles = json.loads((out_dir / STATUS_FILE).read_text(encoding="utf-8")).get("tiles")
    except (OSError, ValueError, AttributeError):
        return {}
    return tiles if isinstance(tiles, dict) else {}


def written_files(job: TileJob) -> dict[str, list[int]]:
    """Size and modification time of the job's outputs, as the status file records them."""
    return {p.name: _file_stamp(p) for p in (job.output, job.sidecar) if p.is_file()}


def _file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _stored_fingerprint(path: Path) -> str | None:
    """The batch fingerprint a sidecar or a label raster's tags carry (``None`` if none or unreadable)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        if path.suffix.lower() == ".json":
            metadata = json.loads(path.read_text(encoding="utf-8"))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    metadata = json.loads(src.tags().get("MASKDIFFUSION_METADATA", "{}"))
    except (OSError, ValueError, RasterioError):
        return None
    batch = metadata.get("batch") if isinstance(metadata, dict) else None
    return batch.get("fingerprint") if isinstance(batch, dict) else None


def remove_temporaries(jobs: Sequence[TileJob]) -> None:
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

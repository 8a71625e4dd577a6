"""OpenVINO's converted models (IR), kept in the user's cache folder between runs and processes.

An entry is a folder ``openvino/<name>/`` holding ``model.xml``, ``model.bin`` and
``manifest.json`` (what it was converted from, and the files' sizes). It is written in a
scratch folder beside it and renamed into place, so no process ever reads half an entry; a
file lock per entry lets one process convert while the others (Dask workers starting together)
wait and then read its result. An entry that does not read back as its manifest says (missing,
truncated, unreadable, from other versions) is removed and converted again. A manifest's
``versions`` names the software that made the entry: writing an entry removes those that differ
from it in ``versions`` alone (about 3 GB each for SD 1.5), which no later run would read. A
cache folder that cannot be written is said once per process; conversions are then kept in
memory only.

openvino and filelock are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

from .cache_folder import cache_folder

__all__ = ["IRCache"]

_FILES = ("model.xml", "model.bin")
_WARNED: set[str] = set()


class IRCache:
    """The IR entries under ``folder`` (default: ``cache_folder() / "openvino"``)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else cache_folder() / "openvino"
        self.writable = self._check_writable()

    def _check_writable(self) -> bool:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.folder):
                pass
        except OSError as err:
            if str(self.folder) not in _WARNED:
                _WARNED.add(str(self.folder))
                warnings.warn(f"the cache folder {self.folder} cannot be written ({err.strerror or err}): "
                              "OpenVINO's conversion is kept in memory only and made again in each new process",
                              stacklevel=2)
            return False
        return True

    @contextlib.contextmanager
    def locked(self, name: str) -> Iterator[None]:
        """Hold entry ``name`` while it is read or made: another process converting it is waited for."""
        if not self.writable:
            yield
            return
        from filelock import FileLock

        with FileLock(self.folder / f"{name}.lock"):
            yield

    def read(self, name: str, manifest: dict):
        """The ``openvino.Model`` of entry ``name`` if it holds what ``manifest`` describes, else
        ``None`` (a bad entry is removed)."""
        entry = self.folder / name
        if not entry.is_dir():
            return None
        try:
            stored = json.loads((entry / "manifest.json").read_text())
            sizes = stored.pop("sizes")
            wrong_size = any((entry / f).stat().st_size != sizes[f] for f in _FILES)
            if wrong_size or stored != json.loads(json.dumps(manifest)):
                raise ValueError("not what its manifest says")
            import openvino

            return openvino.Core().read_model(entry / "model.xml")
        except Exception:  # any damage means: convert again
            self.remove(name)
            return None

    def write(self, name: str, manifest: dict, model) -> None:
        """Save ``model`` as entry ``name`` (weights kept in fp32: ``compress_to_fp16=False``)."""
        if not self.writable:
            return
        import openvino

        try:
            with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=self.folder) as scratch:
                staged = Path(scratch) / name
                staged.mkdir()
                openvino.save_model(model, staged / "model.xml", compress_to_fp16=False)
                sizes = {f: (staged / f).stat().st_size for f in _FILES}
                (staged / "manifest.json").write_text(json.dumps({**manifest, "sizes": sizes}, indent=1))
                self.remove(name)
                os.rename(staged, self.folder / name)
            self._remove_older_versions(name, manifest)
        except (OSError, RuntimeError) as err:  # OpenVINO reports a failed write as a RuntimeError
            reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0]
            warnings.warn(f"the converted model could not be kept in {self.folder} ({reason}); "
                          "it is converted again in the next process", stacklevel=2)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.folder / name, ignore_errors=True)

    def _remove_older_versions(self, name: str, manifest: dict) -> None:
        """Remove the entries made from the same manifest by other versions of the software."""
        def without_versions(m: dict) -> dict:
            return {k: v for k, v in json.loads(json.dumps(m)).items() if k not in ("versions", "sizes")}

        same = without_versions(manifest)
        for entry in self.folder.iterdir():
            if entry.name == name or not entry.is_dir() or entry.name.startswith("."):
                continue
            try:
                stored = json.loads((entry / "manifest.json").read_text())
            except (OSError, ValueError):
                continue
            if isinstance(stored, dict) and without_versions(stored) == same:
                self.remove(entry.name)

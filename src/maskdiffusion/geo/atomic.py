"""Write files so that readers see either the old files or the complete new ones, never a part.

Every output is written to a temporary file beside its target, flushed to disk and checked
(read back) before it is renamed onto the target. :class:`StagedOutputs` holds the renames of
several outputs until all of them were written and checked, so a run leaves either all its
outputs or none, and the files it would have replaced exactly as they were.
"""

from __future__ import annotations

import contextvars
import errno
import glob
import json
import math
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadInputError, MaskDiffusionError, OutputError

__all__ = ["StagedOutputs", "atomic_output", "check_name_length", "check_writable", "make_folder", "output_error",
           "remove_stale_temporaries", "temporary_path", "to_jsonable", "write_json", "write_text"]

#: The :class:`StagedOutputs` that :func:`atomic_output` joins in this thread or task, if any.
_STAGED: contextvars.ContextVar[StagedOutputs | None] = contextvars.ContextVar("maskdiffusion_staged", default=None)

#: Reasons a file system gives, as :func:`os.strerror` words them, found in a library's error text.
_KNOWN_REASONS = tuple(os.strerror(code) for code in (
    errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.ENOENT))


#: The temporaries this process is writing or keeping now (absolute paths): never stale.
_LIVE: set[str] = set()
_LIVE_LOCK = threading.Lock()


def temporary_path(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffix (so GDAL picks the same driver):
    ``.NAME.<12 hex>.tmp.SUFFIX``. It counts as in use by this process until :func:`_release`."""
    tmp = path.with_name(_temporary_name(path, uuid.uuid4().hex[:12]))
    with _LIVE_LOCK:
        _LIVE.add(os.path.abspath(tmp))
    return tmp


def _temporary_name(path: Path, token: str) -> str:
    return f".{path.stem}.{token}.tmp{path.suffix}"


def _release(*tmps: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.difference_update(os.path.abspath(t) for t in tmps)


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete the hidden temporaries of ``path`` (:func:`temporary_path`'s naming) that a run
    killed before its commit (SIGKILL, power loss) left behind; those this process is using
    are kept. Called whenever ``path`` is written again."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.stem)}\.[0-9a-f]{{12}}\.tmp{re.escape(path.suffix)}")
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(path.suffix)}"))
    except OSError:
        return
    with _LIVE_LOCK:
        stale = [p for p in candidates if pattern.fullmatch(p.name) and os.path.abspath(p) not in _LIVE]
    for p in stale:
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


def check_name_length(path: str | os.PathLike, what: str | None = None) -> None:
    """Raise :class:`BadInputError` if the file system cannot hold ``path``'s name or the hidden
    temporary name it is written under (:func:`temporary_path`, 18 bytes longer).

    ``what`` names the output in the message (an option, say); the path by default.
    """
    path = Path(path)
    folder = next((p for p in path.absolute().parents if p.is_dir()), Path("."))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    size, longest = len(os.fsencode(path.name)), len(os.fsencode(_temporary_name(path, "0" * 12)))
    if longest > limit:
        raise BadInputError(f"{what or path}: file name too long ({size} bytes, {longest} for the hidden temporary "
                            f"it is written under; the file system allows {limit})")


def output_error(path: str | os.PathLike, error: BaseException) -> OutputError:
    """One line naming ``path`` and why it could not be written, in our words (no library text)."""
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        text = str(error)
        reason = next((r for r in _KNOWN_REASONS if r.lower() in text.lower()), None)
        reason = reason or (text if isinstance(error, OSError) and text and "\n" not in text else "write error")
    return OutputError(f"cannot write {path}: {reason}; nothing was written or replaced")


def check_writable(folder: str | os.PathLike) -> None:
    """Raise unless files can be created in ``folder``: :class:`BadInputError` when it is
    missing, :class:`OutputError` when it cannot be written (read-only, no permission).

    A probe file is created and removed, so the answer is the file system's own (ACLs,
    read-only mounts and root included), before any work is done.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(f"output folder {folder} does not exist")
    probe = folder / f".maskdiffusion-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.touch(exist_ok=False)
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror or e}") from None
    probe.unlink(missing_ok=True)


def make_folder(folder: str | os.PathLike) -> Path:
    """Create an output folder (with its parents) if missing and check it can be written.

    A file where the folder or one of its parents should be is bad input (exit status 2);
    a folder that cannot be made or written (permissions, read-only) an :class:`OutputError`.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        if file == folder:
            raise BadInputError(f"{folder} is a file, not a folder") from None
        raise BadInputError(f"cannot make the folder {folder}: {file} is a file") from None
    except OSError as e:
        raise OutputError(f"cannot make the folder {folder}: {e.strerror or e}") from None
    check_writable(folder)
    return folder


class StagedOutputs:
    """Outputs of one run, committed together: every :func:`atomic_output` inside the block
    writes and checks its temporary file, and the renames onto the targets happen at the end
    of the block, all of them, only if the block succeeded.

    If any output fails (or the block raises, Ctrl-C included), every temporary file is deleted
    and no target is touched. The renames themselves run with SIGINT and SIGTERM held back;
    should one of them fail, the targets renamed before it are put back as they were.

    With ``replace=False`` (a command without ``--overwrite``) a target is never replaced, even
    one that appeared while the run was going: each is put in place by a hard link, which fails
    if the name exists (on a file system without hard links, by a rename right after checking),
    and a target found there is a :class:`BadInputError`; the targets placed before it are removed.

    Examples
    --------
    >>> with StagedOutputs():                                     # doctest: +SKIP
    ...     write_labels("seg.tif", labels, classes, geo)
    ...     write_sidecar("seg.tif", metadata)
    """

    def __init__(self, replace: bool = True):
        self.replace = replace
        self._staged: list[tuple[Path, Path]] = []
        self._token = None

    def __enter__(self) -> StagedOutputs:
        self._token = _STAGED.set(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        _STAGED.reset(self._token)
        staged, self._staged = self._staged, []
        if exc_type is not None:
            _discard(staged)
            return False
        _commit(staged, self.replace)
        return False

    def _add(self, tmp: Path, target: Path) -> None:
        if any(_same_target(target, t) for _, t in self._staged):
            tmp.unlink(missing_ok=True)
            _release(tmp)
            raise BadInputError(f"{target} is written twice by one run")
        self._staged.append((tmp, target))


def _same_target(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


@contextmanager
def atomic_output(path: str | os.PathLike, check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Give a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    After the block the temporary file is flushed to disk and ``check(tmp)`` reads it back
    (it raises if the file is not what was written); only then is it renamed onto ``path``,
    at once, or at the end of the enclosing :class:`StagedOutputs`. On any failure the
    temporary file is deleted and an existing ``path`` is left untouched; a file system error
    becomes an :class:`OutputError` that names ``path``.

    Examples
    --------
    >>> with atomic_output("notes.txt") as tmp:          # doctest: +SKIP
    ...     tmp.write_text("hello")
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInputError(f"cannot write {path}: folder {path.parent} does not exist")
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"cannot write {path}: nothing was written")
        _flush(tmp)
        if check is not None:
            check(tmp)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        _release(tmp)
        if isinstance(error, MaskDiffusionError) or not isinstance(error, OSError):
            raise
        raise output_error(path, error) from error
    staged = _STAGED.get()
    if staged is not None:
        staged._add(tmp, path)
    else:
        _commit([(tmp, path)])


def _flush(tmp: Path) -> None:
    """Force the file's data to disk, so a full disk shows up now and not after the rename."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        tmp.unlink(missing_ok=True)
    _release(*(tmp for tmp, _ in staged))


def _commit(staged: list[tuple[Path, Path]], replace: bool = True) -> None:
    """Rename every temporary onto its target (or, without ``replace``, put it where no file is);
    if one fails, undo those before it."""
    done: list[tuple[Path, Path | None]] = []
    with _signals_held():
        try:
            for tmp, target in staged:
                failing = target
                if replace:
                    done.append((target, _keep_old(target)))
                    os.replace(tmp, target)
                else:
                    _place_new(tmp, target)
                    done.append((target, None))
                    tmp.unlink(missing_ok=True)
        except BaseException as error:
            _roll_back(done)
            _discard(staged)
            _release(*(old for _, old in done if old is not None))
            if isinstance(error, OSError) and not isinstance(error, MaskDiffusionError):
                raise output_error(failing, error) from error
            raise
        for _, old in done:
            if old is not None:
                old.unlink(missing_ok=True)
        _release(*(tmp for tmp, _ in staged), *(old for _, old in done if old is not None))


def _place_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` unless a file has it (a hard link never replaces)."""
    appeared = BadInputError(f"{target} exists (it appeared while the run was going); pass --overwrite to replace it")
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise appeared from None
    except OSError:  # a file system without hard links
        if target.exists() or target.is_symlink():
            raise appeared from None
        os.replace(tmp, target)


def _keep_old(target: Path) -> Path | None:
    """A hidden second name (hard link) of an existing target, to put it back on failure."""
    if not target.is_file():
        return None
    old = temporary_path(target)
    try:
        os.link(target, old)
    except OSError:
        os.replace(target, old)  # a file system without hard links: moved aside instead
    return old


def _roll_back(done: list[tuple[Path, Path | None]]) -> None:
    for target, old in reversed(done):
        if old is not None:
            os.replace(old, target)
        else:
            target.unlink(missing_ok=True)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back (in the main thread) until the renames are all done."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def to_jsonable(obj: Any) -> Any:
    """Turn numpy values, paths, tuples and NaN/inf (as ``None``) into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_text(path: str | os.PathLike, text: str, parse: Callable[[str], Any] | None = None) -> Path:
    """Write ``text`` (UTF-8) atomically, checked by reading it back (and ``parse``-ing it)."""
    path = Path(path)
    data = text.encode("utf-8")

    def reads_back(tmp: Path) -> None:
        written = tmp.read_bytes()
        try:
            if written != data:
                raise ValueError("changed")
            if parse is not None:
                parse(written.decode("utf-8"))
        except ValueError:
            raise OutputError(f"cannot write {path}: the file does not read back as written") from None

    with atomic_output(path, check=reads_back) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strictly valid JSON (NaN becomes ``null``), atomically,
    checked by parsing it back."""
    return write_text(path, json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n", parse=json.loads)

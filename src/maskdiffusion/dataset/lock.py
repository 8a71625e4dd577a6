"""One writer per project: a lock file that names who holds it.

The lock is the operating system's (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on
``maskdiffusion_project.lock``: it is released when its holder closes the project or dies, so
a lock left by a crashed or killed process never blocks the next one. The file holds the
holder's process id, user, host and start time, for the message a second window gets.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from pathlib import Path

from ..errors import BadInputError, OutputError

__all__ = ["ProjectLock", "ProjectLockedError"]


class ProjectLockedError(BadInputError):
    """The project is open for writing in another window or process."""


def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "?"


class ProjectLock:
    """The write lock of one project folder, held from :meth:`acquire` to :meth:`release`.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> first = ProjectLock(folder).acquire()
    >>> try:
    ...     ProjectLock(folder).acquire()
    ... except ProjectLockedError as e:
    ...     print("locked:", "process" in str(e))
    locked: True
    >>> first.release()
    >>> ProjectLock(folder).acquire().release()
    """

    FILE = "maskdiffusion_project.lock"

    def __init__(self, folder: str | os.PathLike, program: str = "maskdiffusion"):
        self.path = Path(folder) / self.FILE
        self.program = program
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> ProjectLock:
        """Take the lock or raise :class:`ProjectLockedError` naming its holder."""
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot lock the project in {self.path.parent}: {e.strerror or e}") from None
        if not _try_lock(fd):
            os.close(fd)
            raise ProjectLockedError(f"the project in {self.path.parent} is open in {self._holder()}; close it there "
                                     "first (two windows writing one project would corrupt it)")
        info = {"pid": os.getpid(), "user": _user(), "host": socket.gethostname(), "program": self.program,
                "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (" " + json.dumps(info) + "\n").encode())  # byte 0 stays the one Windows locks
        self._fd = fd
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "another window or process"
        where = "this process (another window)" if info.get("pid") == os.getpid() else "another process"
        return (f"{where}: {info.get('program', '?')}, process {info.get('pid', '?')} of {info.get('user', '?')} "
                f"on {info.get('host', '?')} since {info.get('since', '?')}")

    def release(self) -> None:
        """Give the lock back (the file stays: removing it would race with the next holder)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)

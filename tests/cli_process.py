"""``maskdiffusion`` in a child process, under the real failures a user meets.

A file size limit (``RLIMIT_FSIZE`` with SIGXFSZ ignored) makes writes past it fail with EFBIG
as a full disk does; ``obey_permissions`` takes from root the capabilities that let it write
into read-only folders (so a test run as root sees what a user sees); signals are sent to the
running child.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import maskdiffusion

#: Where the package the tests import lives: the child imports the same code.
SRC = Path(maskdiffusion.__file__).parents[1]

#: ``python -m maskdiffusion`` for runs in a subprocess.
#: SIGINT gets Python's handler back: a shell may start test runs with it ignored.
CLI_MAIN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from maskdiffusion.cli import main; sys.exit(main(sys.argv[1:]))")

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _environment() -> dict:
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def _limits(file_size: int | None, obey_permissions: bool):
    """The child's set-up between fork and exec: the file size limit, root's permission bypass."""
    def setup():
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if obey_permissions and os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
                if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                    raise OSError(ctypes.get_errno(), "cannot drop the permission bypass")
    return setup


def command(*args) -> list[str]:
    return [sys.executable, "-c", CLI_MAIN, *map(str, args)]


def run_cli(*args, file_size: int | None = None, obey_permissions: bool = False,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``maskdiffusion ARGS`` to its end; stdout and stderr as text."""
    return subprocess.run(command(*args), capture_output=True, text=True, timeout=timeout, env=_environment(),
                          preexec_fn=_limits(file_size, obey_permissions))


def start_cli(*args, stderr) -> subprocess.Popen:
    """Start ``maskdiffusion ARGS`` in its own session, stderr to the file ``stderr``."""
    return subprocess.Popen(command(*args), stdout=subprocess.DEVNULL, stderr=stderr, env=_environment(),
                            start_new_session=True)


def wait_for(predicate, timeout: float = 120, proc: subprocess.Popen | None = None) -> bool:
    """Poll ``predicate`` until it holds (True), the deadline passes or ``proc`` ends (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(0.05)
    return False


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads on stderr, without the model line, the progress bar's redraws and the notes."""
    lines = [line.split("\r")[-1].strip() for line in stderr.splitlines()]
    return [line for line in lines
            if line and "tile/s" not in line and not line.startswith(("note:", "model "))]

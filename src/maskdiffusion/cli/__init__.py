"""The ``maskdiffusion`` command line: one module per command, on the engine and the libraries.

Exit status: 0 on success; for the errors we raise on purpose (:mod:`maskdiffusion.errors`)
their ``exit_code`` (2 for bad input, 1 when an output cannot be written) after one line on
stderr; 130 after Ctrl-C and 143 after SIGTERM (``docker stop``, Slurm), which stops a run the
same way, leaving nothing half-written. Any other exception is a bug: its traceback is
printed, exit 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import batch, dataset, evaluate, export, random_model, segment

    parser = argparse.ArgumentParser(
        prog="maskdiffusion",
        description="Zero-shot semantic segmentation from class names with Stable Diffusion (MaskDiffusion).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (segment, evaluate, batch, dataset, export, random_model):
        module.add_parser(commands)
    return parser


def main(argv=None) -> int:
    """Entry point of ``maskdiffusion``; returns the exit status."""
    from ..errors import MaskDiffusionError

    args = build_parser().parse_args(argv)
    with sigterm_as_interrupt(), one_line_warnings(args.command):
        try:
            return args.func(args)
        except KeyboardInterrupt as stop:
            print(f"maskdiffusion {args.command}: {str(stop) or 'interrupted'}; nothing half-written was left",
                  file=sys.stderr)
            return getattr(stop, "exit_code", 130)
        except MaskDiffusionError as error:
            print(f"maskdiffusion {args.command}: error: {error}", file=sys.stderr)
            return error.exit_code


@contextmanager
def one_line_warnings(command: str):
    """While the block runs, a warning shown on stderr is one line in our words' form
    (``maskdiffusion COMMAND: warning: ...``), without Python's file, line and source text."""
    def format_warning(message, category, filename, lineno, line=None) -> str:
        return f"maskdiffusion {command}: warning: {message}\n"

    previous = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


@contextmanager
def sigterm_as_interrupt():
    """While the block runs, SIGTERM raises :class:`~maskdiffusion.errors.RunInterrupted`
    (exit status 143) where Ctrl-C would raise KeyboardInterrupt, so it is cleaned up alike."""
    from ..errors import RunInterrupted

    def stop(signum, frame):
        raise RunInterrupted("terminated (SIGTERM)", 128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

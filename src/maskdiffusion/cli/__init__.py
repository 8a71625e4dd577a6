"""The ``maskdiffusion`` command line: one module per command, on the engine and the libraries.

Exit status: 0 on success; for the errors we raise on purpose (:mod:`maskdiffusion.errors`)
their ``exit_code`` (2 for bad input, 1 when an output cannot be written) after one line on
stderr; 130 after Ctrl-C. Any other exception is a bug: its traceback is printed, exit 1.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__
    from . import batch, evaluate, random_model, segment

    parser = argparse.ArgumentParser(
        prog="maskdiffusion",
        description="Zero-shot semantic segmentation from class names with Stable Diffusion (MaskDiffusion).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (segment, evaluate, batch, random_model):
        module.add_parser(commands)
    return parser


def main(argv=None) -> int:
    """Entry point of ``maskdiffusion``; returns the exit status."""
    from ..errors import MaskDiffusionError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"maskdiffusion {args.command}: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except MaskDiffusionError as error:
        print(f"maskdiffusion {args.command}: error: {error}", file=sys.stderr)
        return error.exit_code

"""``maskdiffusion random-model``: save a random-weight SD 1.x-layout model to try the plumbing."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "random-model", help="save a random-weight SD 1.x-layout model (for trying the plumbing)",
        description="Save a random-weight Stable Diffusion with SD 1.x's layout as a diffusers folder. "
                    "Its masks are meaningless: it is for tests, benchmarks and offline trials.")
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..model.random_sd import build_random_sd

    build_random_sd(args.folder, args.size, args.seed)
    print(f"saved a random-weight {args.size} model to {args.folder} (its masks are meaningless)", file=sys.stderr)
    return 0

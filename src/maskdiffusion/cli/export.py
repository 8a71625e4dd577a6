"""``maskdiffusion export``: a project's done images as training data (:mod:`maskdiffusion.dataset.export`)."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    from ..dataset.export import FORMATS

    p = commands.add_parser(
        "export", help="write a dataset project's done images as COCO, ISPRS colour labels or image/label folders",
        description="Write the images of the project in PROJECT marked done, with the class list: one COCO JSON "
                    "(coco), ISPRS-style colour-coded labels (isprs), or image and label folders with a split "
                    "file (folders).")
    p.add_argument("project", type=Path, metavar="PROJECT", help="the project's output folder")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", type=Path, help="export folder (default PROJECT/export-FORMAT)")
    p.add_argument("--val-fraction", type=float, default=0.2, metavar="F",
                   help="folders: the share of images in the val split (default 0.2)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset import Project, export_project
    from .arguments import UsageError

    if not 0 <= args.val_fraction <= 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    with Project.open(args.project, lock=False) as project:
        written = export_project(project, args.out, args.format, val_fraction=args.val_fraction,
                                 overwrite=args.overwrite)
        done = project.counts()["done"]
    folder = written[0].parent if written else args.out
    print(f"wrote {len(written)} files for {done} done image{'s' * (done != 1)} to {folder}", file=sys.stderr)
    return 0

"""``maskdiffusion dataset``: make, resume or show a dataset project (:mod:`maskdiffusion.dataset`)."""

from __future__ import annotations

from pathlib import Path

from .arguments import add_class_arguments, add_model_arguments, add_param_arguments, model_source, params_from_args

__all__ = ["add_parser", "report", "run"]


def add_parser(commands) -> None:
    p = commands.add_parser(
        "dataset", help="make, resume or show a dataset project (images, statuses, next image)",
        description="Show the project in the output folder PROJECT: its images with their statuses (to do, "
                    "drafted, corrected, done, failed), the counts per status and the next image to do. With "
                    "--images, make the project first (or resume it when it has the same classes and settings). "
                    "Drafts that 'maskdiffusion batch --out-dir PROJECT' wrote with the same classes and settings "
                    "are used by the project.")
    p.add_argument("project", type=Path, metavar="PROJECT", help="the project's output folder")
    g = p.add_argument_group("making a project")
    g.add_argument("--images", metavar="SOURCE",
                   help="a folder of images, a quoted glob ('tiles/*_RGBIR.tif') or a list file (one path a line)")
    add_class_arguments(g)
    add_model_arguments(g)
    g.add_argument("--new", action="store_true",
                   help="PROJECT holds a project with other classes or settings: start a new one (the old one's "
                        "files move to PROJECT/previous-<time>/)")
    g.add_argument("--no-memory", action="store_true",
                   help="corrected images do not teach the next drafts (each draft is the paper's)")
    p.add_argument("--reset-memory", action="store_true", help="forget what the corrected images taught")
    add_param_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..dataset import Project
    from .arguments import UsageError, classes_from_args

    if args.images is not None:
        if args.unsupervised is not None:
            raise UsageError("a dataset needs class names; --unsupervised does not apply")
        project = Project.create(args.project, args.images, classes_from_args(args), params=params_from_args(args),
                                 model=model_source(args.model), device=args.device, dtype=args.dtype,
                                 memory=not args.no_memory, new=args.new)
    else:
        if args.new or args.no_memory or args.classes or args.classes_file or args.preset:
            raise UsageError("--new, --no-memory and the classes make a project: give --images as well")
        project = Project.open(args.project, lock=args.reset_memory)
    with project:
        if args.reset_memory:
            project.reset_memory()
        print(report(project))
    return 0


def report(project, limit: int | None = None) -> str:
    """The project as text: classes, settings, counts per status, the next image, every image."""
    counts = project.counts()
    by_example = {c.name for c in project.classes} - {c.name for c in project.text_classes}
    classes = ", ".join(c.name + (" (by example)" if c.name in by_example else "") for c in project.classes)
    taught = len(project.memory.images)
    memory = f"on, {taught} image{'s' * (taught != 1)} taught it" if project.memory_enabled else "off"
    nxt = project.next_todo()
    lines = [
        f"project {project.folder}",
        f"  classes: {classes}",
        f"  model: {project.model}; memory: {memory}",
        f"  {len(project)} images: " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        "  next to do: " + (f"#{nxt + 1} {project.entry(nxt).path.name}" if nxt is not None else "none"),
        "     #  status     image",
    ]
    width = len(str(len(project)))
    for e in project.images[:limit]:
        why = f": {e.reason}" if e.reason else ""
        lines.append(f"  {e.index + 1:>{max(width, 4)}}  {e.status.value:<9}  {e.path.name}{why}")
    return "\n".join(lines)

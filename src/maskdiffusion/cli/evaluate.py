"""``maskdiffusion evaluate``: score predictions against labels (:mod:`maskdiffusion.evaluation`)."""

from __future__ import annotations

import sys
from pathlib import Path

from .arguments import add_model_arguments, add_param_arguments, model_source, output_on_input

__all__ = ["add_parser", "run"]

#: The run parameters ``evaluate --images`` offers for its segmentation.
SEGMENT_PARAMS = ("tile_size", "overlap", "scale", "bands", "encoder", "backend")


def add_parser(commands) -> None:
    from ..evaluation import DATASETS

    parser = commands.add_parser(
        "evaluate",
        help="score predictions against ground-truth labels (IoU, mIoU, accuracy)",
        description="Score label-map predictions against labels, file by file or folder by folder "
                    "(paired by tile id), and write a JSON and Markdown report and a confusion-matrix plot.",
    )
    parser.add_argument("--pred", required=True, help="prediction raster or folder of them")
    parser.add_argument("--labels", required=True, help="label raster or folder of them")
    parser.add_argument("--dataset", choices=DATASETS, default="potsdam6",
                        help="potsdam6/potsdam3: ISPRS RGB-coded labels; index: label rasters (default potsdam6)")
    parser.add_argument("--classes", help="class names for --dataset index: 'a,b,c', preset:NAME or a class file")
    parser.add_argument("--out", default="evaluation", help="report base name: writes OUT.json, OUT.md, OUT.png")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report of that name")
    parser.add_argument("--unsupervised", action="store_true",
                        help="predictions are cluster ids: match them to classes (Hungarian), "
                             "over the data set and per image")
    parser.add_argument("--ignore-index", type=int, default=-1,
                        help="a stored label value to ignore besides unlabelled (index labels), e.g. 255")
    e2e = parser.add_argument_group("end to end", "with --images, segment the images into the --pred folder "
                                    "first (images already segmented there are kept), then score")
    e2e.add_argument("--images", help="an image or a folder of images to segment with the dataset's classes")
    add_model_arguments(e2e)
    add_param_arguments(e2e, names=SEGMENT_PARAMS)
    parser.set_defaults(func=run)


def _classes(value: str | None):
    from ..core.classes import as_class_specs, read_class_file

    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() in (".json", ".txt") or path.is_file():
        return read_class_file(path)
    return as_class_specs(value)


def _segment_first(args, classes) -> None:
    from ..evaluation import dataset_classes, segment_images
    from .arguments import params_from_args

    segment_images(args.images, args.pred, dataset_classes(args.dataset, classes), model_source(args.model),
                   params_from_args(args, SEGMENT_PARAMS), device=args.device, dtype=args.dtype)


def _prepare_outputs(args) -> None:
    """The report's files (and with --images the predictions) may be written: none is one of
    the inputs (whatever --overwrite says), none exists (without --overwrite), the folders can be
    made and written. Checked before any scoring or segmentation."""
    from ..evaluation import EvaluationError, check_report_paths, report_paths
    from ..geo.atomic import make_folder

    clash = output_on_input(dict(enumerate(report_paths(args.out, args.unsupervised).values())), _input_files(args))
    if clash is not None:
        _, path, source = clash
        raise EvaluationError(f"--out {args.out} writes the report to {path}, which is {source}: it would be "
                              "replaced by the report; choose another --out")
    make_folder(check_report_paths(args.out, args.unsupervised, args.overwrite)["json"].parent)
    if args.images:
        if Path(args.pred).is_file():
            raise EvaluationError(f"with --images, --pred names the folder for the predictions, not a file: "
                                  f"{args.pred}")
        make_folder(args.pred)


def _input_files(args) -> list[tuple[str, Path]]:
    """Every file the command reads, with the option that names it (a folder's rasters each)."""
    from ..evaluation import raster_files

    found = []
    for option in ("pred", "labels", "images", "classes"):
        given = getattr(args, option)
        path = Path(given) if given is not None else None
        if path is not None and path.is_dir() and option != "classes":
            found += [(f"an input of --{option} {given}", p) for p in raster_files(path)]
        elif path is not None and path.is_file():
            found.append((f"the input --{option}", path))
    return found


def run(args) -> int:
    """0 on success; bad input raises (one line, exit 2)."""
    from ..evaluation import evaluate_pairs, find_pairs, format_percent, write_report

    _prepare_outputs(args)
    classes = _classes(args.classes)
    if args.images:
        _segment_first(args, classes)
    pairs, lone_preds, lone_labels = find_pairs(args.pred, args.labels, args.dataset)
    report = evaluate_pairs(pairs, args.dataset, classes, args.unsupervised, args.ignore_index)
    report["unmatched_predictions"] = [str(p) for p in lone_preds]
    report["unmatched_labels"] = [str(p) for p in lone_labels]
    for key in ("unmatched_predictions", "unmatched_labels"):
        if report[key]:
            print(f"maskdiffusion evaluate: {len(report[key])} {key.replace('_', ' ')} skipped", file=sys.stderr)
    if report["off_palette_pixels"]:
        print(f"maskdiffusion evaluate: {report['off_palette_pixels']} label pixels of no class colour ignored",
              file=sys.stderr)
    paths = write_report(report, args.out, replace=args.overwrite)
    print(f"mIoU {format_percent(report['miou'])}  pixel accuracy {format_percent(report['pixel_accuracy'])}  "
          f"({report['n_images']} image(s)) -> {', '.join(str(p) for p in paths.values())}")
    return 0

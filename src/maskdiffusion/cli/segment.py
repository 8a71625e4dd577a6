"""``maskdiffusion segment``: one image into a label raster, its sidecar and optional exports."""

from __future__ import annotations

import sys
from pathlib import Path

from .arguments import (
    UsageError,
    add_class_arguments,
    add_model_arguments,
    add_param_arguments,
    classes_from_args,
    model_source,
    params_from_args,
)

__all__ = ["add_parser", "run"]

_SUFFIXES = {
    "out": (".tif", ".tiff", ".png"),
    "confidence": (".tif", ".tiff"),
    "scores": (".npy",),
    "polygons": (".gpkg", ".geojson"),
    "coco": (".json",),
}


def add_parser(commands) -> None:
    parser = commands.add_parser("segment", help="segment one image", description="Segment IMAGE into the named classes.")
    parser.add_argument("image", type=Path, help="GeoTIFF, TIFF + world file, PNG or JPEG")
    add_class_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="label raster (0 = unlabelled, k = k-th class): .tif (georeferenced) or palette .png")
    parser.add_argument("--scores", type=Path, help="also save the class scores (K, H, W) as .npy")
    parser.add_argument("--confidence", type=Path, help="also save the confidence (best minus second-best score) as .tif")
    parser.add_argument("--polygons", type=Path, help="also save the classes as polygons: .gpkg or .geojson (CRS kept)")
    parser.add_argument("--coco", type=Path, help="also save the classes as COCO JSON with RLE masks")
    parser.add_argument("--scribbles", type=Path, metavar="LABELS.tif",
                        help="corrections: a label raster of IMAGE's size, 0 = no stroke, k = class k; painted "
                             "pixels keep their class, the rest is refined from them")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_param_arguments(parser)
    parser.set_defaults(func=run)


def _check_outputs(args) -> list[Path]:
    """Every output path's suffix, folder and existence, before any work."""
    from ..geo.raster_io import sidecar_path

    for name, suffixes in _SUFFIXES.items():
        path = getattr(args, name)
        if path is not None and path.suffix.lower() not in suffixes:
            raise UsageError(f"--{name} must end in {', '.join(suffixes)}, got {path.name}")
    if args.scribbles is not None and args.scores is not None:
        raise UsageError("--scores and --scribbles together are not supported: the scores are those before refinement")
    paths = [args.out, sidecar_path(args.out), *(getattr(args, n) for n in _SUFFIXES if n != "out")]
    paths = [p for p in paths if p is not None]
    for path in paths:
        if not path.parent.is_dir():
            raise UsageError(f"output folder {path.parent} does not exist")
        if path.exists() and not args.overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")
    return paths


def run(args) -> int:
    from ..engine import drain, iter_segment
    from ..geo.raster_io import read_image

    _check_outputs(args)
    classes = classes_from_args(args)
    params = params_from_args(args, return_scores=args.scores is not None,
                              return_confidence=args.confidence is not None)
    image, geo = read_image(args.image)
    scribbles = _read_scribbles(args.scribbles, image.shape[:2]) if args.scribbles is not None else None
    steps = iter_segment(image, classes, model_source(args.model), params, device=args.device, dtype=args.dtype,
                         keep_features=scribbles is not None)
    with _ProgressBar(enabled=not args.quiet) as bar:
        result = drain(steps, bar.update)
    if scribbles is not None:
        from ..core.scribbles import apply_scribbles

        result = apply_scribbles(result, scribbles)
    metadata = dict(result.metadata(), image=str(args.image), georeference=geo.to_dict())
    if args.scribbles is not None:
        metadata["scribbles"] = str(args.scribbles)
    _write_outputs(args, result, geo, metadata)
    if not args.quiet:
        size = f"{result.labels.shape[1]}x{result.labels.shape[0]} px"
        print(f"wrote {args.out} ({size}): {_class_fractions(result)}", file=sys.stderr)
    return 0


def _write_outputs(args, result, geo, metadata) -> None:
    """The label raster, the asked-for exports and the sidecar; on failure none of them stays.

    A file system error (disk full, no permission...) is an :class:`OutputError` (one line,
    exit status 1).
    """
    from ..errors import MaskDiffusionError, OutputError
    from ..geo.raster_io import sidecar_path, write_labels, write_raster, write_sidecar

    written: list[Path] = []
    target = args.out
    try:
        written.append(write_labels(args.out, result.labels, result.classes, geo, metadata))
        if args.confidence is not None:
            target = args.confidence
            written.append(write_raster(args.confidence, result.confidence, geo))
        if args.scores is not None:
            target = args.scores
            written.append(_save_npy(args.scores, result.scores))
        if args.polygons is not None:
            from ..geo.exports import write_polygons

            target = args.polygons
            written.append(write_polygons(args.polygons, result.labels, result.classes, geo))
        if args.coco is not None:
            from ..geo.exports import write_coco

            target = args.coco
            written.append(write_coco(args.coco, result.labels, result.classes, args.image.name))
        target = sidecar_path(args.out)
        written.append(write_sidecar(args.out, metadata))
    except BaseException as error:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, MaskDiffusionError):
            reason = error.strerror or str(error) or type(error).__name__
            raise OutputError(f"cannot write {target}: {reason}; no output was left") from error
        raise


def _read_scribbles(path: Path, shape):
    """A one-band stroke raster of the image's size (0 = no stroke, k = class k)."""
    from ..geo.raster_io import read_image

    scribbles, _ = read_image(path)
    if scribbles.ndim != 2:
        raise UsageError(f"--scribbles must be a one-band label raster, {path.name} has {scribbles.shape[2]} bands")
    if scribbles.shape != tuple(shape):
        raise UsageError(f"--scribbles is {scribbles.shape[1]}x{scribbles.shape[0]} px, the image {shape[1]}x{shape[0]}")
    return scribbles


class _ProgressBar:
    """A tqdm bar over the tiles, created at the first tile (not while the model loads)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()

    def update(self, step) -> None:
        if not self.enabled or step.stage == "load":
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=step.total, unit="tile", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(step.stage)
        self.bar.update(step.done - self.bar.n)


def _save_npy(path: Path, array) -> Path:
    import numpy as np

    from ..geo.atomic import atomic_output

    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return path


def _class_fractions(result) -> str:
    import numpy as np

    counts = np.bincount(result.labels.ravel(), minlength=len(result.classes) + 1)[1:]
    total = max(int(result.labels.size), 1)
    return ", ".join(f"{c.name} {100 * n / total:.1f}%" for c, n in zip(result.classes, counts) if n)

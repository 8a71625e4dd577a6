"""The ``maskdiffusion`` command line: ``segment``, ``evaluate``, ``batch`` and ``random-model``.

Exit status: 0 on success, 2 for bad input or usage (one line on stderr), 1 for anything else.
A failed run leaves no output file behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input or usage: reported in one line, exit status 2."""


def _bands(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands takes 0-based band indices like 0,1,2, got {text!r}") from None


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model, --device and --dtype, shared by every command that runs the model."""
    from .core.params import DEFAULT_MODEL

    p.add_argument("--model", default=None, metavar="SRC",
                   help=f"hub id, diffusers folder or .safetensors/.ckpt file (default {DEFAULT_MODEL}); "
                        "'random:tiny' builds a random-weight model to try the plumbing offline")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default=None, choices=["auto", "fp16", "fp32", "bf16"],
                   help="default: fp16 on GPU, fp32 on CPU")


def add_class_arguments(p: argparse.ArgumentParser) -> None:
    """--classes, --classes-file and --preset (one of them, except in unsupervised mode)."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--classes", help="comma-separated class names; 'name=prompt|prompt' gives prompt texts")
    g.add_argument("--classes-file", type=Path, help="a .json or text class list (one class a line)")
    g.add_argument("--preset", help="potsdam6, potsdam3, cityscapes or cocostuff27")


def add_param_arguments(p: argparse.ArgumentParser) -> None:
    """The run parameters of :class:`~maskdiffusion.core.params.SegmentParams`."""
    from .core.params import SegmentParams

    d = SegmentParams()
    p.add_argument("--tile-size", type=int, default=d.tile_size, help="tile side in image pixels, multiple of 64 (default %(default)s)")
    p.add_argument("--overlap", type=int, default=d.overlap, help="overlap between tiles in pixels (default %(default)s)")
    p.add_argument("--scale", type=float, default=d.scale, help="resample the image by this factor first (default %(default)s)")
    p.add_argument("--prototypes", choices=["tile", "image"], default=d.prototypes,
                   help="class prototypes per tile (the paper) or shared over the image (default %(default)s)")
    p.add_argument("--attention", choices=["exp", "softmax"], default=d.attention, help="attention maps (default %(default)s)")
    p.add_argument("--timestep", type=int, default=d.timestep, help="UNet timestep (default %(default)s)")
    p.add_argument("--noise", action="store_true", help="add the scheduler's noise for --timestep (seeded)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bands", type=_bands, default=None, help="0-based bands used as R,G,B, e.g. 3,0,1 for IRRG from RGBIR")
    p.add_argument("--unsupervised", type=int, default=None, metavar="K", help="K clusters instead of classes")
    p.add_argument("--clustering", choices=["kmeans", "spectral"], default=d.clustering)
    p.add_argument("--spatial-weight", type=float, default=d.spatial_weight, help="spectral clustering: weight of position")


def params_from_args(args, **extra):
    from .core.params import SegmentParams

    return SegmentParams(
        tile_size=args.tile_size, overlap=args.overlap, scale=args.scale, prototypes=args.prototypes,
        attention=args.attention, timestep=args.timestep, noise=args.noise, seed=args.seed, bands=args.bands,
        unsupervised=args.unsupervised, clustering=args.clustering, spatial_weight=args.spatial_weight, **extra,
    )


def classes_from_args(args):
    """The class list the arguments name (empty in unsupervised mode without names)."""
    from .core.classes import as_class_specs, preset_classes, read_class_file

    if args.classes_file is not None:
        return read_class_file(args.classes_file)
    if args.preset:
        return preset_classes(args.preset)
    if args.classes is not None:
        return as_class_specs(args.classes)
    if args.unsupervised:
        return []
    raise UsageError("name the classes: --classes 'road,building,tree', --classes-file FILE or --preset NAME")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="maskdiffusion", description="Zero-shot semantic segmentation from class names with Stable Diffusion (MaskDiffusion).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("segment", help="segment one image", description="Segment IMAGE into the named classes.")
    s.add_argument("image", type=Path, help="GeoTIFF, TIFF + world file, PNG or JPEG")
    add_class_arguments(s)
    add_model_arguments(s)
    s.add_argument("--out", type=Path, required=True, help="class index raster: .tif (georeferenced) or palette .png")
    s.add_argument("--scores", type=Path, help="also save the class scores (K, H, W) as .npy")
    s.add_argument("--confidence", type=Path, help="also save the confidence (best minus second-best score) as .tif")
    s.add_argument("--polygons", type=Path, help="also save the classes as polygons: .gpkg or .geojson (CRS kept)")
    s.add_argument("--coco", type=Path, help="also save the classes as COCO JSON with RLE masks")
    s.add_argument("--scribbles", type=Path, metavar="LABELS.tif",
                   help="corrections: a label raster of IMAGE's size, 0 = no stroke, i+1 = class i; painted pixels "
                        "keep their class, the rest is refined from them")
    s.add_argument("--overwrite", action="store_true", help="replace existing output files")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_param_arguments(s)
    s.set_defaults(func=run_segment)

    r = sub.add_parser("random-model", help="save a random-weight SD 1.x-layout model (for trying the plumbing)",
                       description="Save a random-weight Stable Diffusion with SD 1.x's layout as a diffusers folder. "
                                   "Its masks are meaningless: it is for tests, benchmarks and offline trials.")
    r.add_argument("folder", type=Path)
    r.add_argument("--size", choices=["tiny", "sd15"], default="tiny")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(func=run_random_model)

    from .batch import add_batch_parser
    from .evaluation import add_evaluate_parser

    add_evaluate_parser(sub)
    add_batch_parser(sub)
    return parser


def _check_outputs(paths, overwrite: bool) -> None:
    for p in paths:
        if p is None:
            continue
        if not p.parent.is_dir():
            raise UsageError(f"output folder {p.parent} does not exist")
        if p.exists() and not overwrite:
            raise UsageError(f"{p} exists; pass --overwrite to replace it")


def run_segment(args) -> int:
    from .engine import iter_segment
    from .geo.raster_io import read_image, sidecar_path, write_labels, write_raster, write_sidecar

    if args.out.suffix.lower() not in (".tif", ".tiff", ".png"):
        raise UsageError(f"--out must end in .tif, .tiff or .png, got {args.out.name}")
    if args.confidence is not None and args.confidence.suffix.lower() not in (".tif", ".tiff"):
        raise UsageError(f"--confidence must end in .tif, got {args.confidence.name}")
    if args.scores is not None and args.scores.suffix.lower() != ".npy":
        raise UsageError(f"--scores must end in .npy, got {args.scores.name}")
    if args.polygons is not None and args.polygons.suffix.lower() not in (".gpkg", ".geojson"):
        raise UsageError(f"--polygons must end in .gpkg or .geojson, got {args.polygons.name}")
    if args.coco is not None and args.coco.suffix.lower() != ".json":
        raise UsageError(f"--coco must end in .json, got {args.coco.name}")
    if args.scribbles is not None and args.scores is not None:
        raise UsageError("--scores and --scribbles together are not supported: the scores are those before refinement")
    _check_outputs([args.out, sidecar_path(args.out), args.scores, args.confidence, args.polygons, args.coco],
                   args.overwrite)
    classes = classes_from_args(args)
    params = params_from_args(args, return_scores=args.scores is not None)
    image, geo = read_image(args.image)
    scribbles = _read_scribbles(args.scribbles, image.shape[:2]) if args.scribbles is not None else None
    gen = iter_segment(image, classes, _model_source(args.model), params, device=args.device, dtype=args.dtype,
                       keep_features=scribbles is not None)
    result = _drain(gen, quiet=args.quiet)
    if scribbles is not None:
        from .core.refine import apply_scribbles

        result = apply_scribbles(result, scribbles)

    metadata = dict(result.metadata(), image=str(args.image), georeference=geo.to_dict())
    if args.scribbles is not None:
        metadata["scribbles"] = str(args.scribbles)
    written: list[Path] = []
    try:
        written.append(write_labels(args.out, result.labels, result.classes, geo, metadata))
        if args.confidence is not None:
            written.append(write_raster(args.confidence, result.confidence, geo))
        if args.scores is not None:
            written.append(_save_npy(args.scores, result.scores))
        if args.polygons is not None:
            from .geo.exports import write_polygons

            written.append(write_polygons(args.polygons, result.labels, result.classes, geo))
        if args.coco is not None:
            from .geo.exports import write_coco

            written.append(write_coco(args.coco, result.labels, result.classes, args.image.name))
        written.append(write_sidecar(args.out, metadata))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    if not args.quiet:
        counts = _class_fractions(result)
        print(f"wrote {args.out} ({result.labels.shape[1]}x{result.labels.shape[0]} px): {counts}", file=sys.stderr)
    return EXIT_OK


def _read_scribbles(path: Path, shape):
    """A one-band stroke raster of the image's size (0 = no stroke, i+1 = class i)."""
    from .geo.raster_io import read_image

    scribbles, _ = read_image(path)
    if scribbles.ndim != 2:
        raise UsageError(f"--scribbles must be a one-band label raster, {path.name} has {scribbles.shape[2]} bands")
    if scribbles.shape != tuple(shape):
        raise UsageError(f"--scribbles is {scribbles.shape[1]}x{scribbles.shape[0]} px, the image {shape[1]}x{shape[0]}")
    return scribbles


def _model_source(source):
    """``random:tiny``/``random:sd15`` → a random-weight model saved in the user cache."""
    if not source or not str(source).startswith("random:"):
        return source
    from .model.random_sd import random_model_folder

    print(f"note: {source} has random weights; its masks are meaningless", file=sys.stderr)
    return str(random_model_folder(str(source)))


def _drain(gen, quiet: bool):
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet or step.stage == "load":
                continue
            if bar is None:
                bar = tqdm(total=step.total, unit="tile", file=sys.stderr, dynamic_ncols=True)
            if bar is not None:
                bar.set_description(step.stage)
                bar.update(step.done - bar.n)
    finally:
        gen.close()
        if bar is not None:
            bar.close()


def _save_npy(path: Path, array) -> Path:
    import numpy as np

    from .geo.atomic import atomic_output

    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return path


def _class_fractions(result) -> str:
    import numpy as np

    counts = np.bincount(result.labels.ravel(), minlength=len(result.classes))
    total = counts.sum()
    return ", ".join(f"{c.name} {100 * n / total:.1f}%" for c, n in zip(result.classes, counts) if n)


def run_random_model(args) -> int:
    from .model.random_sd import build_random_sd

    build_random_sd(args.folder, args.size, args.seed)
    print(f"saved a random-weight {args.size} model to {args.folder} (its masks are meaningless)", file=sys.stderr)
    return EXIT_OK


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input: reported in one line with exit status 2."""
    errors: list[type[BaseException]] = [UsageError, ValueError, FileNotFoundError]
    try:
        from .model.loading import ModelNotFoundError

        errors.append(ModelNotFoundError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv=None) -> int:
    """Entry point of ``maskdiffusion``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("maskdiffusion: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _usage_errors() as e:
        print(f"maskdiffusion {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - the one line a user sees; --debug-free by design
        print(f"maskdiffusion {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    from maskdiffusion.cli import main as _main  # the package's own module, so its error classes match

    sys.exit(_main())

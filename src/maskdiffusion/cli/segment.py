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
    output_on_input,
    params_from_args,
    precision_note,
    same_file,
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
    parser = commands.add_parser("segment", help="segment one image",
                                 description="Segment IMAGE into the named classes.")
    parser.add_argument("image", type=Path, help="GeoTIFF, TIFF + world file, PNG or JPEG")
    add_class_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="label raster (0 = unlabelled, k = k-th class): .tif (georeferenced) or palette .png")
    parser.add_argument("--scores", type=Path, help="also save the class scores (K, H, W) as .npy")
    parser.add_argument("--confidence", type=Path,
                        help="also save the confidence (best minus second-best score) as .tif")
    parser.add_argument("--polygons", type=Path, help="also save the classes as polygons: .gpkg or .geojson (CRS kept)")
    parser.add_argument("--coco", type=Path, help="also save the classes as COCO JSON with RLE masks")
    parser.add_argument("--scribbles", type=Path, metavar="LABELS.tif",
                        help="corrections: a label raster of IMAGE's size, 0 = no stroke, k = class k; painted "
                             "pixels keep their class, the rest is refined from them")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_param_arguments(parser)
    parser.set_defaults(func=run)


def _outputs(args) -> dict[str, Path]:
    """Every file the run writes (the sidecar too), by the option that names it."""
    from ..geo.raster_io import sidecar_path

    named = {"--out": args.out, "the sidecar of --out": sidecar_path(args.out)}
    named.update({f"--{n}": getattr(args, n) for n in _SUFFIXES if n != "out" and getattr(args, n) is not None})
    return named


def _check_outputs(args, classes, n_classes: int) -> None:
    """Every output's suffix, file name, folder and existence, and the format's class limit,
    before any work: a run that cannot write its results does not start."""
    from ..geo.atomic import check_name_length, check_writable
    from ..geo.raster_io import check_sidecar_free

    for name, suffixes in _SUFFIXES.items():
        path = getattr(args, name)
        if path is not None and path.suffix.lower() not in suffixes:
            raise UsageError(f"--{name} must end in {', '.join(suffixes)}, got {path.name}")
    if args.scribbles is not None and args.scores is not None:
        raise UsageError("--scores and --scribbles together are not supported: the scores are those before refinement")
    outputs = _outputs(args)
    for name, path in outputs.items():
        check_name_length(path, f"{name} {path.name}")
    _refuse_collisions(outputs, {"IMAGE": args.image, "--scribbles": args.scribbles})
    if not args.unsupervised:  # the names of clusters are known after the run; checked when written
        check_sidecar_free(args.out, [c.name for c in classes])
    if args.out.suffix.lower() == ".png" and n_classes > 255:
        raise UsageError(f"--out {args.out.name}: a palette PNG holds at most 255 classes, this run has {n_classes}; "
                         "use .tif")
    for folder in dict.fromkeys(path.parent for path in outputs.values()):
        check_writable(folder)
    for path in outputs.values():
        if path.is_dir():
            raise UsageError(f"{path} is a folder; name a file")
        if path.exists() and not args.overwrite:
            raise UsageError(f"{path} exists; pass --overwrite to replace it")


def _refuse_collisions(outputs: dict[str, Path], inputs: dict[str, Path | None]) -> None:
    """Two outputs at one path, or an output on an input, even with --overwrite."""
    clash = output_on_input(outputs, inputs)
    if clash is not None:
        name, path, source = clash
        raise UsageError(f"{name} {path} is the input {source}: it would be replaced by its own segmentation; "
                         f"choose another {name}")
    named = list(outputs.items())
    for i, (name, path) in enumerate(named):
        other = next((n for n, p in named[:i] if same_file(path, p)), None)
        if other is not None:
            raise UsageError(f"{name} and {other} are the same file ({path}); give each output its own")


def run(args) -> int:
    from ..engine import drain, iter_segment
    from ..geo.raster_io import read_input

    classes = classes_from_args(args)
    params = params_from_args(args, return_scores=args.scores is not None,
                              return_confidence=args.confidence is not None)
    _check_outputs(args, classes, params.unsupervised or len(classes))
    precision_note(args.device, args.dtype)
    image, geo, valid = read_input(args.image)
    _notes(args, image, geo, params)
    scribbles = _read_scribbles(args.scribbles, image.shape[:2]) if args.scribbles is not None else None
    steps = iter_segment(image, classes, model_source(args.model), params, device=args.device, dtype=args.dtype,
                         keep_features=scribbles is not None, valid=valid)
    with _ProgressBar(enabled=not args.quiet) as bar:
        result = drain(steps, bar.update)
    if scribbles is not None:
        from ..core.scribbles import apply_scribbles

        result = _nodata_unlabelled(apply_scribbles(result, scribbles), valid, scribbles)
    from ..geo.raster_io import image_reference

    metadata = dict(result.metadata(), image=image_reference(args.image, args.out), georeference=geo.to_dict())
    if args.scribbles is not None:
        metadata["scribbles"] = str(args.scribbles)
    _write_outputs(args, result, geo, metadata)
    if not args.quiet:
        size = f"{result.labels.shape[1]}x{result.labels.shape[0]} px"
        print(f"wrote {args.out} ({size}): {_class_fractions(result)}", file=sys.stderr)
    return 0


def _nodata_unlabelled(result, valid, scribbles):
    """The refined result with the image's nodata pixels unlabelled again, as the engine left
    them (refinement reassigns every pixel without a stroke), their confidence NaN; painted
    pixels keep their stroke's class."""
    if valid is not None:
        unpainted = ~valid & (scribbles == 0)
        result.labels[unpainted] = 0
        if result.confidence is not None:
            result.confidence[unpainted] = float("nan")
    return result


def _notes(args, image, geo, params) -> None:
    """One line each on stderr: the bands used when the image is not gray or RGB, and where
    polygons of an image georeferenced by ground control points are placed."""
    from ..core.image import MAX_BANDS, choose_bands

    n_bands = 1 if image.ndim == 2 else image.shape[2]
    if params.bands is None and n_bands not in (1, 3) and n_bands <= MAX_BANDS:
        used = choose_bands(n_bands, None)
        how = "band 0 as gray" if len(set(used)) == 1 else f"bands {','.join(map(str, used))} as R,G,B"
        print(f"note: {args.image.name} has {n_bands} bands; using {how} (choose with --bands)", file=sys.stderr)
    if args.polygons is not None:
        from ..geo.exports import polygon_placement

        _, note = polygon_placement(geo)
        if note:
            print(f"note: {args.image.name}: {note}", file=sys.stderr)


def _write_outputs(args, result, geo, metadata) -> None:
    """The label raster, the asked-for exports and the sidecar, committed together: each is
    written beside its target and read back, and only when all are good are they renamed
    into place. Otherwise none is, and the files they would replace are left as they were; a
    file system error (disk full, no permission...) is an :class:`OutputError` naming the file
    (one line, exit status 1). Without ``--overwrite`` no file is replaced, not even one that
    appeared during the run (exit status 2).
    """
    import numpy as np

    from ..geo.atomic import StagedOutputs
    from ..geo.raster_io import write_labels, write_raster, write_sidecar

    with StagedOutputs(replace=args.overwrite):
        write_labels(args.out, result.labels, result.classes, geo, metadata)
        if args.confidence is not None:
            write_raster(args.confidence, result.confidence, geo, nodata=np.nan)
        if args.scores is not None:
            _save_npy(args.scores, result.scores)
        if args.polygons is not None:
            from ..geo.exports import write_polygons

            write_polygons(args.polygons, result.labels, result.classes, geo)
        if args.coco is not None:
            from ..geo.exports import write_coco

            write_coco(args.coco, result.labels, result.classes, args.image.name)
        write_sidecar(args.out, metadata)


def _read_scribbles(path: Path, shape):
    """A one-band stroke raster of the image's size (0 = no stroke, k = class k)."""
    from ..geo.raster_io import read_image

    scribbles, _ = read_image(path)
    if scribbles.ndim != 2:
        raise UsageError(f"--scribbles must be a one-band label raster, {path.name} has {scribbles.shape[2]} bands")
    if scribbles.shape != tuple(shape):
        raise UsageError(f"--scribbles is {scribbles.shape[1]}x{scribbles.shape[0]} px, "
                         f"the image {shape[1]}x{shape[0]}")
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
        if not self.enabled:
            return
        if step.stage == "load":
            if step.message.startswith(("model ", "OpenVINO")):
                print(step.message, file=sys.stderr)
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=step.total, unit="tile", file=sys.stderr, dynamic_ncols=True)
        self.bar.set_description(step.stage)
        self.bar.update(step.done - self.bar.n)


#: Values written or compared at a time by :func:`_save_npy` (16 MiB of float32).
_NPY_PIECE = 2**22


def _save_npy(path: Path, array) -> Path:
    """Save ``array`` as .npy, atomically, checked by reading it back piece by piece.

    The data go through Python's ``write`` in 16 MiB pieces (numpy's own ``tofile`` loses the
    reason of a short write), so a full disk says so, as every other output does; the check
    reads the file in pieces too (a memory map kept every page it compared resident: the
    whole file again in memory).
    """
    import numpy as np

    from ..errors import OutputError
    from ..geo.atomic import atomic_output

    array = np.ascontiguousarray(array)
    flat = array.reshape(-1)

    def reads_back(tmp: Path) -> None:
        fmt = np.lib.format
        with open(tmp, "rb") as f:
            version = fmt.read_magic(f)
            header = fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f)
            same = header == (array.shape, False, array.dtype)
            for i in range(0, flat.size, _NPY_PIECE) if same else ():
                piece = flat[i : i + _NPY_PIECE]
                if not np.array_equal(np.fromfile(f, array.dtype, piece.size), piece, equal_nan=True):
                    same = False
                    break
        if not same:
            raise OutputError(f"cannot write {path}: the written file does not read back as written; "
                              "nothing was written or replaced")

    with atomic_output(path, check=reads_back) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array(_Writes(f), array, allow_pickle=False)
    return path


class _Writes:
    """A file seen only through its ``write`` method."""

    def __init__(self, file):
        self.write = file.write


def _class_fractions(result) -> str:
    """Each class's share of the pixels, counted in bands of about 262,144 pixels: the whole
    map is never copied (``np.bincount`` of all of it made an int64 copy, 8 bytes a pixel)."""
    import numpy as np

    labels = result.labels
    counts = np.zeros(len(result.classes) + 1, np.int64)
    rows = max(1, 2**18 // max(labels.shape[1], 1))
    for y in range(0, labels.shape[0], rows):
        counts += np.bincount(labels[y : y + rows].ravel(), minlength=counts.size)[: counts.size]
    total = max(int(labels.size), 1)
    return ", ".join(f"{c.name} {100 * n / total:.1f}%" for c, n in zip(result.classes, counts[1:]) if n)

"""The options every ``maskdiffusion`` command shares: model, classes and run parameters.

The run parameters are generated from :class:`~maskdiffusion.core.params.SegmentParams`
(its fields' metadata), so each has one name, one default and one help text everywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from pathlib import Path

from ..errors import BadInputError

__all__ = [
    "UsageError",
    "add_class_arguments",
    "add_model_arguments",
    "add_param_arguments",
    "classes_from_args",
    "model_source",
    "output_on_input",
    "params_from_args",
    "parse_bands",
    "precision_note",
    "same_file",
]


class UsageError(BadInputError):
    """Options that do not go together or name nothing: one line, exit status 2."""


def parse_bands(text: str) -> tuple[int, ...]:
    """``"3,0,1"`` -> ``(3, 0, 1)``; argparse reports anything else in one line."""
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands takes 0-based band indices like 0,1,2, got {text!r}") from None


def add_model_arguments(parser) -> None:
    """--model, --device and --dtype, for every command that runs the model."""
    from ..core.params import DEFAULT_MODEL

    parser.add_argument("--model", default=None, metavar="SRC",
                        help=f"hub id, diffusers folder or .safetensors/.ckpt file (default {DEFAULT_MODEL}); "
                             "'random:tiny' builds a random-weight model to try the plumbing offline")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    parser.add_argument("--dtype", default=None, choices=["auto", "fp16", "fp32", "bf16"],
                        help="default auto: fp16 on a GPU, bf16 on a CPU with native bf16, else fp32")


def add_class_arguments(parser) -> None:
    """--classes, --classes-file and --preset (one of them, except in unsupervised mode)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--classes", help="comma-separated class names; 'name=prompt|prompt' gives prompt texts")
    group.add_argument("--classes-file", type=Path, help="a .json or text class list (one class a line)")
    group.add_argument("--preset", help="potsdam6, potsdam3, cityscapes or cocostuff27")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_param_arguments(parser, names: typing.Iterable[str] | None = None) -> None:
    """The run parameters of :class:`SegmentParams` offered on the command line (all, or ``names``)."""
    from ..core.params import SegmentParams, face_fields

    hints = typing.get_type_hints(SegmentParams)
    for f in face_fields("cli"):
        if names is not None and f.name not in names:
            continue
        meta, kind = f.metadata, hints[f.name]
        default = "" if f.default is None else f" (default {f.default})"
        if kind is bool:
            parser.add_argument(_flag(f.name), action="store_true", help=meta["help"])
            continue
        options = {"default": f.default, "help": meta["help"] + default, "metavar": meta.get("metavar")}
        if "choices" in meta and not meta.get("or_path"):
            options.update(choices=meta["choices"], metavar=None)
        if f.name == "bands":
            options["type"] = parse_bands
        else:
            options["type"] = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
        parser.add_argument(_flag(f.name), **options)


def params_from_args(args, names: typing.Iterable[str] | None = None, **extra):
    """The :class:`SegmentParams` of parsed arguments (parameters not offered keep their default).

    ``names`` must be those given to :func:`add_param_arguments` when it offered only some: a
    command's own option of the same name (``evaluate --unsupervised``) is not a parameter.
    """
    from ..core.params import SegmentParams, face_fields

    names = None if names is None else set(names)
    given = {f.name: getattr(args, f.name) for f in face_fields("cli")
             if (names is None or f.name in names) and hasattr(args, f.name)}
    return SegmentParams(**given, **extra)


def classes_from_args(args):
    """The class list the arguments name (empty in unsupervised mode without names)."""
    from ..core.classes import as_class_specs, preset_classes, read_class_file

    if args.classes_file is not None:
        return read_class_file(args.classes_file)
    if args.preset:
        return preset_classes(args.preset)
    if args.classes is not None:
        return as_class_specs(args.classes)
    if getattr(args, "unsupervised", None) is not None:
        return []
    raise UsageError("name the classes: --classes 'road,building,tree', --classes-file FILE or --preset NAME")


def model_source(source):
    """The ``--model`` value, with a note on stderr for the random-weight test models."""
    if source and str(source).startswith("random:"):
        print(f"note: {source} has random weights; its masks are meaningless", file=sys.stderr)
    return source


def precision_note(device: str | None, dtype: str | None) -> None:
    """One line on stderr when fp16 is asked for on a CPU, where it runs about 3x slower."""
    if dtype != "fp16":
        return
    from ..model.loading import resolve_device

    if resolve_device(device).type == "cpu":
        print("note: fp16 on a CPU runs about 3x slower than bf16 or fp32; --dtype auto picks bf16 where the CPU "
              "has it, else fp32", file=sys.stderr)


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same path after links, or the same existing file)."""
    if os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b)):
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def output_on_input(outputs: dict[str, Path], inputs: dict[str, Path | None] | list[tuple[str, Path]]
                    ) -> tuple[str, Path, str] | None:
    """The first output that is one of the inputs, as (its name, its path, the input's name), or None.

    ``outputs`` and ``inputs`` name each file as the user did (an option, say) with its path;
    ``inputs`` may be (name, path) pairs, several files under one name.
    """
    pairs = list(inputs.items() if isinstance(inputs, dict) else inputs)
    for name, path in outputs.items():
        for source, given in pairs:
            if given is not None and same_file(path, given):
                return name, path, source
    return None

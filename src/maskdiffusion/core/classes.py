"""Classes to segment: names, prompt texts and colours, their validation and presets.

A :class:`ClassSpec` is the one description of a class used by the engine, the
command line, the napari widget and every export.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Real
from pathlib import Path

from ..errors import BadInputError

__all__ = [
    "ClassSpec",
    "ClassListError",
    "PRESETS",
    "as_class_specs",
    "classes_from_rows",
    "default_color",
    "format_class_list",
    "new_class_id",
    "parse_class_list",
    "preset_classes",
    "read_class_file",
    "with_free_colors",
    "write_class_file",
]


class ClassListError(BadInputError):
    """A class list that cannot be segmented (empty, blank or duplicate names)."""


#: The one message for a class without a name, wherever the list came from.
EMPTY_NAME = "a class name is empty; name every class, e.g. 'road, building, tree'"


@dataclass(frozen=True)
class ClassSpec:
    """One class: the name shown to people, the prompt texts given to the model, a colour.

    ``prompts`` defaults to ``(name,)``. Several prompts are averaged (``docs/algorithm.md`` §3), so a class
    named "impervious" can be prompted with ``("road", "pavement")``.
    """

    name: str
    prompts: tuple[str, ...] = ()
    color: tuple[int, int, int] | None = None

    def __post_init__(self):
        name = " ".join(str(self.name).split())
        if not name:
            raise ClassListError(EMPTY_NAME)
        prompts = self.prompts
        if isinstance(prompts, str):
            prompts = (prompts,)
        prompts = tuple(" ".join(str(p).split()) for p in prompts) or (name,)
        if any(not p for p in prompts):
            raise ClassListError(f"class {name!r} has an empty prompt text")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "prompts", prompts)
        if self.color is not None:
            object.__setattr__(self, "color", _color(name, self.color))

    @property
    def prompt(self) -> str:
        """The prompt texts as one string, ``" | "``-separated (the class-file syntax)."""
        return " | ".join(self.prompts)

    def to_dict(self) -> dict:
        return {"name": self.name, "prompts": list(self.prompts), "color": list(self.color) if self.color else None}

    @classmethod
    def from_dict(cls, d: dict) -> ClassSpec:
        """A class from its stored form; anything else is a :class:`ClassListError` saying what."""
        if not isinstance(d, dict):
            raise ClassListError(f"a class must be a name or an object with a \"name\", got {d!r}")
        if not isinstance(d.get("name"), str):
            raise ClassListError("a class has no \"name\"" if "name" not in d else
                                 f"a class name must be text, got {d['name']!r}")
        prompts = d.get("prompts", d.get("prompt", ()))
        if isinstance(prompts, str):
            prompts = [p.strip() for p in prompts.split("|")]
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise ClassListError(f"class {d['name']!r}: prompts must be a list of texts, got {prompts!r}")
        return cls(d["name"], tuple(prompts), d.get("color") or None)


# A qualitative palette (Glasbey-like) for classes without a colour; index 0 is never black.
_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def default_color(index: int) -> tuple[int, int, int]:
    """Colour of the ``index``-th class when none is given (cycles through 20, then varies)."""
    r, g, b = _PALETTE[index % len(_PALETTE)]
    shift = 37 * (index // len(_PALETTE))
    return ((r + shift) % 256, (g + 2 * shift) % 256, (b + 3 * shift) % 256)


def _check_unique(specs: Sequence[ClassSpec]) -> None:
    if not specs:
        raise ClassListError("no classes given: name at least one class, e.g. --classes 'road,building,tree'")
    seen: dict[str, int] = {}
    for i, s in enumerate(specs):
        key = s.name.lower()
        if key in seen:
            raise ClassListError(f"duplicate class name {s.name!r} (classes {seen[key] + 1} and {i + 1})")
        seen[key] = i


def as_class_specs(classes: Iterable[ClassSpec | str | dict] | str) -> list[ClassSpec]:
    """Validate any class description and give a list of :class:`ClassSpec` with colours.

    Accepts ``ClassSpec`` objects, plain names, dicts (``name``, ``prompts``, ``color``), a
    comma-separated string, or a preset name prefixed by ``preset:``. Raises
    :class:`ClassListError` for an empty list, blank names or duplicates.
    """
    if isinstance(classes, str):
        if classes.startswith("preset:"):
            return preset_classes(classes[len("preset:"):])
        return parse_class_list(classes)
    specs = []
    for c in classes:
        if isinstance(c, ClassSpec):
            specs.append(c)
        elif isinstance(c, dict):
            specs.append(ClassSpec.from_dict(c))
        else:
            specs.append(ClassSpec(str(c)))
    _check_unique(specs)
    return [s if s.color else ClassSpec(s.name, s.prompts, default_color(i)) for i, s in enumerate(specs)]


def parse_class_list(text: str) -> list[ClassSpec]:
    """Parse ``"road, building=house|roof, tree"``: comma-separated, ``name=prompt|prompt``.

    An empty name anywhere (``"a,,b"``, a trailing comma, ``"=prompt"``) is an error, never
    dropped; a blank text is an empty list, which is an error too.
    """
    items = [x.strip() for x in text.split(",")] if text.strip() else []
    specs = []
    for item in items:
        name, _, prompts = item.partition("=")
        specs.append(ClassSpec(name, tuple(p.strip() for p in prompts.split("|")) if prompts else ()))
    return as_class_specs(specs)


def format_class_list(classes: Iterable[ClassSpec]) -> str:
    """Classes as the line :func:`parse_class_list` reads (``name=prompt|prompt`` where the
    prompts are not just the name): what the dock's class line shows and remembers.

    Examples
    --------
    >>> format_class_list(parse_class_list("road, building=house|roof"))
    'road, building=house | roof'
    """
    return ", ".join(c.name if c.prompts == (c.name,) else f"{c.name}={c.prompt}" for c in classes)


def with_free_colors(specs: Sequence[ClassSpec]) -> list[ClassSpec]:
    """The classes, those without a colour given the first palette colours no other class has.

    Examples
    --------
    >>> [c.color for c in with_free_colors([ClassSpec("a", (), default_color(0)), ClassSpec("b")])]
    [(230, 25, 75), (60, 180, 75)]
    """
    used = {s.color for s in specs if s.color}
    free = (default_color(i) for i in range(10**6) if default_color(i) not in used)
    return [s if s.color else ClassSpec(s.name, s.prompts, next(free)) for s in specs]


def classes_from_rows(rows: Iterable[tuple[str, str, tuple[int, int, int] | None]]) -> list[ClassSpec]:
    """Classes from a class table's rows of (name, prompt text, colour): prompts ``a | b``, and
    a name holding commas is several classes, the new ones in colours no other class has.
    Raises :class:`ClassListError` with the reason (an empty name, a duplicate...).

    Examples
    --------
    >>> [(c.name, c.prompts) for c in classes_from_rows([("road", "road | street", None), ("tree, sky", "", None)])]
    [('road', ('road', 'street')), ('tree', ('tree',)), ('sky', ('sky',))]
    """
    specs = []
    for name, prompt, color in rows:
        names = name.split(",") if "," in name else [name]
        prompts = tuple(p for p in prompt.split("|") if p.strip())
        for i, part in enumerate(names):
            specs.append(ClassSpec(part, prompts if len(names) == 1 else (), color if i == 0 else None))
    return as_class_specs(with_free_colors(specs)) if specs else []


def read_class_file(path: str | Path) -> list[ClassSpec]:
    """Read a class list: ``.json`` (a list of dicts, or ``{"classes": [...]}``) or text.

    Text files hold one class a line, ``name``, ``name = prompt | prompt`` or
    ``name = prompt ; #rrggbb``; lines starting with ``#`` are comments. A file that cannot be
    used is a :class:`ClassListError` naming the file, the line and what is wrong.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ClassListError(f"cannot read class file {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ClassListError(f"class file {path}, line {line}: not UTF-8 text "
                             f"(byte 0x{data[e.start]:02x}); save it as UTF-8") from None
    if path.suffix.lower() == ".json":
        return _read_json_classes(path, text)
    specs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        line, _, colour = line.partition(";")
        name, _, prompts = line.partition("=")
        try:
            specs.append(ClassSpec(name, tuple(p.strip() for p in prompts.split("|")) if prompts.strip() else (),
                                   colour.strip() or None))
        except ClassListError as e:
            raise ClassListError(f"class file {path}, line {number}: {e}") from None
    return _in_file(path, specs)


def _read_json_classes(path: Path, text: str) -> list[ClassSpec]:
    try:
        data = _loads_with_lines(text)
    except json.JSONDecodeError as e:
        raise ClassListError(f"class file {path}, line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})"
                             ) from None
    entries = data.get("classes", []) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ClassListError(f"class file {path}: expected a list of classes or {{\"classes\": [...]}}")
    specs = []
    for entry in entries:
        try:
            specs.append(ClassSpec(entry) if isinstance(entry, str) else ClassSpec.from_dict(entry))
        except ClassListError as e:
            where = f", line {entry.line}" if isinstance(entry, _LocatedDict) else ""
            raise ClassListError(f"class file {path}{where}: {e}") from None
    return _in_file(path, specs)


def _in_file(path: Path, specs: list[ClassSpec]) -> list[ClassSpec]:
    """:func:`as_class_specs` of a file's classes; an empty or duplicate list names the file."""
    try:
        return as_class_specs(specs)
    except ClassListError as e:
        raise ClassListError(f"class file {path}: {e}") from None


class _LocatedDict(dict):
    """A JSON object that knows the line it starts on."""

    line = 0


def _loads_with_lines(text: str):
    """``json.loads`` whose objects are :class:`_LocatedDict`, so a bad class can name its line."""
    import json.decoder
    import json.scanner

    decoder = json.JSONDecoder()

    def parse_object(s_and_end, *args):
        obj, end = json.decoder.JSONObject(s_and_end, *args)
        located = _LocatedDict(obj)
        located.line = s_and_end[0].count("\n", 0, s_and_end[1]) + 1
        return located, end

    decoder.parse_object = parse_object
    decoder.scan_once = json.scanner.py_make_scanner(decoder)
    return decoder.decode(text)


def _color(name: str, value) -> tuple[int, int, int]:
    """A class colour from ``#rrggbb`` or three values 0-255."""
    if isinstance(value, str):
        h = value.strip().removeprefix("#")
        if len(h) == 6 and all(c in "0123456789abcdefABCDEF" for c in h):
            return tuple(int(h[i : i + 2], 16) for i in (0, 2, 4))
    elif isinstance(value, Iterable):
        items = list(value)
        if len(items) == 3 and all(isinstance(c, Real) and not isinstance(c, bool) and float(c).is_integer()
                                   and 0 <= c <= 255 for c in items):
            return tuple(int(c) for c in items)
    raise ClassListError(f"class {name!r}: colour must be #rrggbb or three values 0-255, got {value!r}")


def write_class_file(path: str | Path, classes: Sequence[ClassSpec]) -> None:
    """Write a class list as JSON (readable by :func:`read_class_file`)."""
    Path(path).write_text(json.dumps({"classes": [c.to_dict() for c in classes]}, indent=2), encoding="utf-8")


def _specs(rows) -> list[ClassSpec]:
    return [ClassSpec(name, tuple(prompt.split("|")) if prompt else (), color) for name, prompt, color in rows]


PRESETS: dict[str, list[ClassSpec]] = {
    # ISPRS Potsdam, the colour codes of its labels (ISPRS's own colour codes).
    "potsdam6": _specs([
        ("impervious surfaces", "", (255, 255, 255)),
        ("building", "", (0, 0, 255)),
        ("low vegetation", "", (0, 255, 255)),
        ("tree", "", (0, 255, 0)),
        ("car", "", (255, 255, 0)),
        ("clutter", "", (255, 0, 0)),
    ]),
    # Potsdam-3 (IIC/STEGO): {impervious+car}, {building+clutter}, {low vegetation+tree}.
    "potsdam3": _specs([
        ("roads and cars", "road|car", (255, 255, 255)),
        ("buildings and clutter", "building|clutter", (0, 0, 255)),
        ("vegetation", "low vegetation|tree", (0, 255, 0)),
    ]),
    "cityscapes": _specs([
        ("road", "", (128, 64, 128)), ("sidewalk", "", (244, 35, 232)), ("building", "", (70, 70, 70)),
        ("wall", "", (102, 102, 156)), ("fence", "", (190, 153, 153)), ("pole", "", (153, 153, 153)),
        ("traffic light", "", (250, 170, 30)), ("traffic sign", "", (220, 220, 0)),
        ("vegetation", "", (107, 142, 35)), ("terrain", "", (152, 251, 152)), ("sky", "", (70, 130, 180)),
        ("person", "", (220, 20, 60)), ("rider", "", (255, 0, 0)), ("car", "", (0, 0, 142)),
        ("truck", "", (0, 0, 70)), ("bus", "", (0, 60, 100)), ("train", "", (0, 80, 100)),
        ("motorcycle", "", (0, 0, 230)), ("bicycle", "", (119, 11, 32)),
    ]),
    # COCO-Stuff-27 in the order of STEGO/DiffSeg: 12 "things" then 15 "stuff" super-categories;
    # the two names used twice there get distinct display names and the same prompt.
    "cocostuff27": [
        ClassSpec(n, tuple(p.split("|")) if p else (), default_color(i))
        for i, (n, p) in enumerate([
            ("electronic", ""), ("appliance", ""), ("food (thing)", "food"), ("furniture (thing)", "furniture"),
            ("indoor", ""), ("kitchen", ""), ("accessory", ""), ("animal", ""), ("outdoor", ""),
            ("person", ""), ("sports", ""), ("vehicle", ""), ("ceiling", ""), ("floor", ""),
            ("food (stuff)", "food"), ("furniture (stuff)", "furniture"), ("raw material", ""),
            ("textile", ""), ("wall", ""), ("window", ""), ("building", ""), ("ground", ""),
            ("plant", ""), ("sky", ""), ("solid", ""), ("structural", ""), ("water", ""),
        ])
    ],
}


def preset_classes(name: str) -> list[ClassSpec]:
    """The class list of a preset: ``potsdam6``, ``potsdam3``, ``cityscapes`` or ``cocostuff27``."""
    key = name.strip().lower().replace("-", "").replace("_", "")
    if key not in PRESETS:
        raise ClassListError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return list(PRESETS[key])


def new_class_id() -> str:
    """A fresh class id: what an annotation's layers, sessions and undo steps know a class by,
    whatever its position or name."""
    return uuid.uuid4().hex[:8]

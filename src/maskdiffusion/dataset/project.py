"""A dataset project: many images, one class list, one output folder, a status per image.

The output folder holds everything the project makes, and never an input image::

    maskdiffusion_project.json   the project file (readable JSON): images, statuses, classes, settings
    maskdiffusion_project.lock   held while a window or process has the project open for writing
    labels/NAME.tif              the annotator's labels of image NAME (label GeoTIFF, georeferenced,
    labels/NAME.classes.json     values per docs: 0 = unlabelled, k = k-th class) and their sidecar,
    labels/NAME.edited.npz       which pixels the annotator set (so reopening keeps the strokes)
    drafts/NAME.tif, .classes.json, .refine.npz   drafts the project made (and what Refine needs)
    memory/NAME.npz              what image NAME taught the class memory (``docs/algorithm.md`` §4.7)
    NAME.tif, .classes.json, .refine.npz          drafts ``maskdiffusion batch --out-dir`` wrote here

Images are named by their file stem (two images with one stem are refused). Classes only grow
(a class added by example is appended), so a label value keeps its meaning in every file.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec, as_class_specs
from ..core.labels import label_dtype, label_values
from ..core.memory import MEMORY_CELLS, ClassMemory, Contribution
from ..core.params import DEFAULT_MODEL, SegmentParams
from ..errors import BadInputError
from .lock import ProjectLock

__all__ = ["PROJECT_FILE", "ImageEntry", "Project", "ProjectError", "ProjectMismatchError", "Status"]

PROJECT_FILE = "maskdiffusion_project.json"
FORMAT = "maskdiffusion-project"
VERSION = 1
LABELS, DRAFTS, MEMORY = "labels", "drafts", "memory"
_LIST_SUFFIXES = (".txt", ".lst", ".list", ".csv")


class ProjectError(BadInputError):
    """A project that cannot be made or opened as asked, with the reason in one sentence."""


class ProjectMismatchError(ProjectError):
    """The folder holds a project made with other classes or settings than those asked for."""


class Status(str, Enum):
    """Where an image stands: to do, drafted (a draft waits), corrected (labels saved), done
    (finished, exported), failed (with a reason)."""

    TODO = "to do"
    DRAFTED = "drafted"
    CORRECTED = "corrected"
    DONE = "done"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


#: Statuses whose labels the annotator saved: they teach the class memory.
LABELLED = (Status.CORRECTED, Status.DONE)


@dataclass(frozen=True)
class ImageEntry:
    """One image of a project: its position, file, name (its outputs' stem) and status."""

    index: int
    path: Path
    name: str
    status: Status
    reason: str | None = None
    labels: Path | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def relative_path(path: Path, start: Path) -> str:
    """``path`` relative to the folder ``start`` (absolute across drives)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:  # another drive (Windows)
        return str(path)


def find_images(source, exclude: Path | None = None) -> list[Path]:
    """The image files of a source: a folder (its images), a glob pattern, a list file (one
    path a line, relative to the list; ``#`` comments), one image, or a sequence of paths.

    Files a list names that do not exist are kept (they fail with their reason later).
    """
    from ..batch.jobs import IMAGE_SUFFIXES, expand_inputs

    if not isinstance(source, (str, os.PathLike)):
        return [Path(p).expanduser().resolve() for p in source]
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in _LIST_SUFFIXES and path.suffix.lower() not in IMAGE_SUFFIXES:
        lines = path.read_text(encoding="utf-8").splitlines()
        items = [line.split(",")[0].strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        images = [(path.parent / Path(item).expanduser()).resolve() for item in items]
        if not images:
            raise ProjectError(f"the list {path} names no image")
        return images
    return expand_inputs([source], exclude=exclude)


class Project:
    """A dataset: images source + output folder + classes + model settings + per-image status.

    Make one with :meth:`create` (or resume it: the same call on the same folder opens it) or
    :meth:`open` it; it holds the folder's write lock until :meth:`close` (or the ``with``
    block ends). Every change is written to the project file at once, atomically.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "photos").mkdir()
    >>> for i in range(3):
    ...     Image.fromarray(np.full((32, 48, 3), 60 * i, np.uint8)).save(root / "photos" / f"img{i}.png")
    >>> with Project.create(root / "out", root / "photos", "road, tree", model="random:tiny") as project:
    ...     print([e.status.value for e in project.images], project.next_todo())
    ...     path = project.save_labels(0, np.ones((32, 48), np.uint8))
    ...     print(path.relative_to(root).as_posix(), project.images[0].status.value, project.next_todo())
    ['to do', 'to do', 'to do'] 0
    out/labels/img0.tif corrected 1
    >>> Project.open(root / "out", lock=False).counts()["corrected"]
    1
    """

    def __init__(self, folder: Path, data: dict, lock: ProjectLock | None):
        self.folder = folder
        self._data = data
        self._lock = lock
        self._mutex = threading.RLock()
        self._memory: ClassMemory | None = None

    # ------------------------------------------------------------------ making and opening

    @staticmethod
    def exists(folder: str | os.PathLike) -> bool:
        """Whether ``folder`` holds a project file."""
        return (Path(folder) / PROJECT_FILE).is_file()

    @classmethod
    def create(cls, folder: str | os.PathLike, images, classes, *, params: SegmentParams | None = None,
               model: str | None = None, device: str = "auto", dtype: str | None = None, memory: bool = True,
               new: bool = False) -> Project:
        """Make a project in ``folder`` (created if missing) over ``images``, or resume it.

        Parameters
        ----------
        folder : path
            The output folder; it must be writable and must not be (or contain) the images' folder.
        images : path, glob pattern, list file or sequence of paths
            See :func:`find_images`. Every format the command line reads (GeoTIFF, TIFF with a
            world file, ``top_potsdam_*`` tiles, PNG, JPEG), of any size and band count.
        classes : class list (as :func:`~maskdiffusion.core.classes.as_class_specs` takes it)
        params, model, device, dtype
            The run settings, the same for every image (defaults: the paper, SD v1-4).
        memory : bool
            Let corrected images teach the next drafts (``docs/algorithm.md`` §4.7).
        new : bool
            When ``folder`` holds a project made with other classes or settings, start a new one:
            the old project's files move to ``folder/previous-<time>/`` (nothing is deleted).

        Returns
        -------
        Project, holding the folder's lock. A folder with a project of the same classes and
        settings is resumed (images it lacks, added to the folder since, are appended; ``memory``
        is switched as asked); one with other classes raises :class:`ProjectMismatchError`
        unless ``new``. Images whose file cannot be read are marked failed with the reason; the
        rest go on.
        """
        from ..batch.jobs import model_key
        from ..geo.atomic import make_folder

        folder = Path(folder).expanduser().resolve()
        specs = tuple(as_class_specs(classes))
        params = params or SegmentParams()
        model = model_key(model) or DEFAULT_MODEL
        paths = find_images(images)
        _check_folder(folder, images, paths)
        paths = [p for p in paths if folder not in p.parents]
        make_folder(folder)
        lock = ProjectLock(folder).acquire()
        try:
            if cls.exists(folder):
                try:
                    old = cls(folder, _read_project(folder), lock)
                    problem = old._differs(specs, params, model)
                except ProjectError as error:
                    if not new:
                        raise
                    old, problem = None, str(error)
                if problem is None:
                    old.memory_enabled = memory
                    old._add_images(paths)
                    return old._reconciled()
                if not new:
                    raise ProjectMismatchError(f"{problem}; open it with its own settings, or start a new project "
                                               "there (the old one's files are kept in a 'previous-…' folder)")
                _archive(folder)
            data = {
                "format": FORMAT, "version": VERSION, "created": _now(),
                "source": [str(p) for p in images] if not isinstance(images, (str, os.PathLike)) else str(images),
                "classes": [dict(c.to_dict(), by_example=False) for c in specs],
                "model": model, "device": device, "dtype": dtype,
                "parameters": params.to_dict(),
                "memory": {"enabled": bool(memory), "n0": MEMORY_CELLS},
                "images": [],
            }
            project = cls(folder, data, lock)
            project._add_images(paths)
            return project._reconciled()
        except BaseException:
            lock.release()
            raise

    @classmethod
    def open(cls, folder: str | os.PathLike, classes=None, *, lock: bool = True) -> Project:
        """Open the project in ``folder`` to go on where it stopped.

        ``classes``, when given, must be the project's (else :class:`ProjectMismatchError`
        says which it has). ``lock=False`` opens it to read only (statuses, export): no lock
        is taken, and changes are refused.
        """
        folder = Path(folder).expanduser().resolve()
        if not cls.exists(folder):
            raise ProjectError(f"no project in {folder}: it has no {PROJECT_FILE}")
        held = ProjectLock(folder).acquire() if lock else None
        try:
            project = cls(folder, _read_project(folder), held)
            if classes is not None:
                problem = project._differs(tuple(as_class_specs(classes)))
                if problem is not None:
                    raise ProjectMismatchError(f"{problem}; open it with its own classes, or start a new project")
            return project._reconciled() if held else project
        except BaseException:
            if held is not None:
                held.release()
            raise

    def close(self) -> None:
        """Give the folder's lock back (the project file is always saved already)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ what it holds

    @property
    def classes(self) -> tuple[ClassSpec, ...]:
        """Every class, in label-value order (value k = ``classes[k - 1]``), those added by example last."""
        return tuple(ClassSpec.from_dict(c) for c in self._data["classes"])

    @property
    def text_classes(self) -> tuple[ClassSpec, ...]:
        """The classes the model is prompted with (not those added by example)."""
        return tuple(ClassSpec.from_dict(c) for c in self._data["classes"] if not c.get("by_example"))

    @property
    def params(self) -> SegmentParams:
        return SegmentParams.from_dict(self._data["parameters"])

    @property
    def model(self) -> str:
        return self._data["model"]

    @property
    def device(self) -> str:
        return self._data.get("device") or "auto"

    @property
    def dtype(self) -> str | None:
        return self._data.get("dtype")

    @property
    def memory_enabled(self) -> bool:
        """Whether corrected images teach the next drafts; setting it is saved at once (what
        was learnt stays, unused while off)."""
        return bool(self._data["memory"]["enabled"])

    @memory_enabled.setter
    def memory_enabled(self, on: bool) -> None:
        self._writable()
        with self._mutex:
            self._data["memory"]["enabled"] = bool(on)
            self._save()

    @property
    def writable(self) -> bool:
        return self._lock is not None

    @property
    def images(self) -> tuple[ImageEntry, ...]:
        """Every image with its status, in the project's order."""
        with self._mutex:
            return tuple(self.entry(i) for i in range(len(self._data["images"])))

    def __len__(self) -> int:
        return len(self._data["images"])

    def entry(self, index: int) -> ImageEntry:
        """Image ``index`` with its status."""
        if not 0 <= index < len(self._data["images"]):
            raise IndexError(f"image index {index} out of range 0-{len(self._data['images']) - 1}")
        d = self._data["images"][index]
        labels = self.labels_path(index) if d.get("labels") else None
        return ImageEntry(index, (self.folder / d["path"]).resolve(), d["name"], Status(d["status"]),
                          d.get("reason"), labels)

    def counts(self) -> dict[str, int]:
        """How many images have each status (every status listed)."""
        with self._mutex:
            statuses = [d["status"] for d in self._data["images"]]
        return {s.value: statuses.count(s.value) for s in Status}

    def next_todo(self, after: int | None = None) -> int | None:
        """The first image after ``after`` (from the start by default, wrapping round) that is
        to do or drafted; ``None`` when none is left."""
        with self._mutex:
            n = len(self._data["images"])
            start = 0 if after is None else after + 1
            for i in (j % n for j in range(start, start + n)):
                if self._data["images"][i]["status"] in (Status.TODO.value, Status.DRAFTED.value):
                    return i
        return None

    def following(self, index: int, n: int) -> list[int]:
        """The ``n`` images after ``index``, wrapping round (never ``index`` itself): those to draft
        ahead while image ``index`` is corrected."""
        ahead = ((index + k) % len(self) for k in range(1, n + 1))
        return list(dict.fromkeys(i for i in ahead if i != index))

    def labels_path(self, index: int) -> Path:
        """Where image ``index``'s labels are saved (``labels/NAME.tif``)."""
        return self.folder / LABELS / f"{self._data['images'][index]['name']}.tif"

    def draft_path(self, index: int) -> Path:
        """Where the project keeps its draft of image ``index`` (``drafts/NAME.tif``)."""
        return self.folder / DRAFTS / f"{self._data['images'][index]['name']}.tif"

    def stored_draft(self, index: int) -> tuple[Path, str] | None:
        """The stored draft of image ``index`` and where it came from: the project's own
        (``"draft"``), else one ``maskdiffusion batch`` finished here with the project's classes,
        parameters and model (``"batch"``, per its status file and fingerprints); or ``None``."""
        from ..batch.jobs import finished_output

        path = self.draft_path(index)
        if path.is_file() and path.with_suffix(".classes.json").is_file():
            return path, "draft"
        found = finished_output(self.folder, self.entry(index).path)
        if found is None:
            return None
        job, settings = found
        wanted = self.batch_settings()
        return (job.output, "batch") if all(settings.get(k) == v for k, v in wanted.items()) else None

    def stored_state(self, index: int):
        """The refinement state saved with image ``index``'s stored draft, or ``None``."""
        from ..geo.refine_file import RefineFileError, read_refine_state, refine_path

        found = self.stored_draft(index)
        if found is None or not refine_path(found[0]).is_file():
            return None
        try:
            return read_refine_state(refine_path(found[0]))[0]
        except RefineFileError:
            return None

    def batch_settings(self) -> dict:
        """The settings a ``maskdiffusion batch`` draft must have been made with to be used:
        classes, parameters and model, as batch records them."""
        from ..batch.jobs import BatchConfig

        identity = BatchConfig(self.text_classes, self.params, self.model).identity()
        return {k: identity[k] for k in ("classes", "parameters", "model")}

    # ------------------------------------------------------------------ changes

    def _writable(self) -> None:
        if self._lock is None:
            raise ProjectError(f"the project in {self.folder} was opened to read only")

    def _save(self) -> None:
        from .. import __version__
        from ..geo.atomic import write_json

        self._data.update(saved=_now(), software_version=__version__)
        write_json(self.folder / PROJECT_FILE, self._data)

    def mark(self, index: int, status: Status | str, reason: str | None = None) -> None:
        """Set image ``index``'s status (``reason``: why it failed).

        Corrected and done need its labels saved (:meth:`save_labels`). Leaving corrected or
        done (back to to do, say) takes what the image taught out of the class memory; its
        labels file stays.
        """
        status = Status(status)
        self._writable()
        with self._mutex:
            d = self._data["images"][self.entry(index).index]
            if status in LABELLED and not d.get("labels"):
                raise ProjectError(f"save the labels of {d['name']} before marking it {status}")
            was = Status(d["status"])
            d["status"] = status.value
            d.pop("reason", None)
            if status is Status.FAILED:
                d["reason"] = reason or "failed"
            if self.memory_enabled and (status in LABELLED) != (was in LABELLED):
                if status in LABELLED:
                    self._learn(index, None, None)
                else:
                    self._forget(d["name"])
            self._save()

    def save_labels(self, index: int, labels: np.ndarray, classes=None, *, edited: np.ndarray | None = None,
                    state=None, status: Status | str = Status.CORRECTED) -> Path:
        """Save image ``index``'s labels into the output folder and set its status.

        Parameters
        ----------
        labels : (H, W) integer array, the image's size
            0 = unlabelled, k = ``classes[k - 1]``.
        classes : class list, optional
            The classes ``labels`` refers to (default: the project's). They are matched to the
            project's by name; a class the project lacks (added by example) is appended to it,
            so the next drafts know it.
        edited : (H, W) bool, optional
            The pixels the annotator set, kept so that reopening the image keeps its strokes.
        state : RefineState, optional
            The image's refinement state (features), for the class memory; by default the one
            saved with its draft.
        status : corrected (default) or done

        Returns
        -------
        Path of the label GeoTIFF (``labels/NAME.tif``, with ``NAME.classes.json``), written
        atomically with the image's georeference: a failed write (a full disk) leaves the
        previous files whole.
        """
        from ..geo.atomic import StagedOutputs
        from ..geo.raster_io import image_info, write_labels, write_sidecar

        status = Status(status)
        if status not in LABELLED:
            raise ProjectError(f"labels are saved as corrected or done, not {status}")
        self._writable()
        entry = self.entry(index)
        labels = np.asarray(labels)
        info = image_info(entry.path)
        if labels.shape != (info.height, info.width):
            raise ProjectError(f"labels of {labels.shape[1] if labels.ndim > 1 else '?'}x{labels.shape[0]} px for "
                               f"{entry.name}, which is {info.width}x{info.height} px")
        with self._mutex:
            values, specs = self._project_values(labels, classes)
            path = self.labels_path(index)
            path.parent.mkdir(exist_ok=True)
            metadata = {"classes": [dict(c.to_dict(), value=k) for k, c in enumerate(specs, 1)],
                        "label_values": label_values(specs), "image": relative_path(entry.path, path.parent),
                        "georeference": info.geo.to_dict(), "model": self.model, "parameters": self._data["parameters"],
                        "project": {"folder": "..", "name": entry.name, "status": status.value}}
            with StagedOutputs():
                write_labels(path, values, specs, info.geo, metadata)
                if edited is not None:
                    _write_marks(path.with_suffix(".edited.npz"), np.asarray(edited, bool), labels.shape)
                write_sidecar(path, metadata)
            self._data["classes"] = [dict(c.to_dict(), by_example=c.name.lower() not in self._text_names())
                                     for c in specs]
            d = self._data["images"][index]
            d.update(status=status.value, labels=relative_path(path, self.folder).replace(os.sep, "/"))
            d.pop("reason", None)
            if self.memory_enabled:
                self._learn(index, values, state)
            self._save()
        return path

    def _text_names(self) -> set[str]:
        return {c["name"].lower() for c in self._data["classes"] if not c.get("by_example")}

    def _project_values(self, labels: np.ndarray, classes) -> tuple[np.ndarray, tuple[ClassSpec, ...]]:
        """``labels`` in the project's values, and the project's classes with those it lacked appended."""
        if labels.dtype.kind not in "iu":
            raise ProjectError(f"labels must be integers (0 = unlabelled, k = k-th class), got {labels.dtype}")
        specs = list(self.classes)
        given = specs if classes is None else as_class_specs(classes)
        index = {c.name.lower(): k for k, c in enumerate(specs, start=1)}
        lut = np.zeros(len(given) + 1, np.int64)
        for k, c in enumerate(given, start=1):
            if c.name.lower() not in index:
                specs.append(c)
                index[c.name.lower()] = len(specs)
            lut[k] = index[c.name.lower()]
        top = int(labels.max()) if labels.size else 0
        if top > len(given) or (labels.size and int(labels.min()) < 0):
            raise ProjectError(f"label values must be 0 (unlabelled) to {len(given)} (the classes), found {top}")
        return lut[labels].astype(label_dtype(len(specs))), tuple(as_class_specs(specs))

    # ------------------------------------------------------------------ the class memory

    @property
    def memory(self) -> ClassMemory:
        """What the corrected images taught (``docs/algorithm.md`` §4.7), kept in ``memory/``."""
        with self._mutex:
            if self._memory is None:
                self._memory = _load_memory(self.folder / MEMORY, float(self._data["memory"]["n0"]))
            return self._memory

    def memory_snapshot(self) -> ClassMemory | None:
        """A copy of the memory for a draft made meanwhile (``None`` when the memory is off)."""
        if not self.memory_enabled:
            return None
        with self._mutex:
            return ClassMemory(self.memory.n0, dict(self.memory.images))

    def reset_memory(self) -> None:
        """Forget what every corrected image taught; the next drafts are the paper's again."""
        self._writable()
        with self._mutex:
            for key in list(self.memory.images):
                self._forget(key)
            self._save()

    def _learn(self, index: int, values: np.ndarray | None, state) -> bool:
        """Teach the memory image ``index``'s saved labels (``values`` if just written) under its
        features (``state``, else its draft's); False when no features of it exist."""
        from ..geo.raster_io import read_image

        d = self._data["images"][index]
        if state is None:
            state = self.stored_state(index)
        if state is None:
            return False
        if values is None:
            values = read_image(self.labels_path(index))[0]
        if state.shape != values.shape:
            return False
        names = [c.name for c in self.classes]
        self.memory.update(d["name"], state.features, values, names, state.stride, state.basis)
        _write_contribution(self.folder / MEMORY / f"{d['name']}.npz", self.memory.images[d["name"]])
        return True

    def _forget(self, key: str) -> None:
        self.memory.forget(key)
        (self.folder / MEMORY / f"{key}.npz").unlink(missing_ok=True)

    # ------------------------------------------------------------------ consistency

    def _differs(self, classes, params: SegmentParams | None = None, model: str | None = None) -> str | None:
        """What differs between this project and the asked-for classes and settings, or None."""
        mine = [(c.name.lower(), c.prompts) for c in self.text_classes]
        asked = [(c.name.lower(), c.prompts) for c in classes]
        where = f"the project in {self.folder}"
        if mine != asked:
            extra = [c.name for c in self.classes if c not in self.text_classes]
            have = ", ".join(c.name for c in self.text_classes) + (f" (and by example {', '.join(extra)})"
                                                                    if extra else "")
            return f"{where} was made with the classes {have}, not {', '.join(c.name for c in classes)}"
        if params is not None and params.to_dict() != self._data["parameters"]:
            changed = [k for k, v in params.to_dict().items() if self._data["parameters"].get(k) != v]
            return f"{where} was made with other parameters ({', '.join(changed)})"
        if model is not None and model != self.model:
            return f"{where} was made with the model {self.model}, not {model}"
        return None

    def _add_images(self, paths: Sequence[Path]) -> None:
        """Append the images the project lacks; those whose file cannot be read fail with the reason."""
        from ..batch.tasks import one_line
        from ..geo.raster_io import image_info

        with self._mutex:
            known = {(self.folder / d["path"]).resolve() for d in self._data["images"]}
            names = {d["name"]: (self.folder / d["path"]).resolve() for d in self._data["images"]}
            for path in paths:
                if path in known:
                    continue
                if path.stem in names:
                    raise ProjectError(f"{names[path.stem]} and {path} would both be saved as {path.stem}.tif; "
                                       "rename one")
                entry = {"path": relative_path(path, self.folder).replace(os.sep, "/"), "name": path.stem,
                         "status": Status.TODO.value}
                try:
                    image_info(path)
                except (BadInputError, OSError) as e:
                    entry.update(status=Status.FAILED.value, reason=one_line(e))
                self._data["images"].append(entry)
                names[path.stem] = path
            if not self._data["images"]:
                raise ProjectError("the project has no images")
            self._save()

    def _reconciled(self) -> Project:
        """The statuses made true to the folder: labels written while the project file could not
        be (a full disk) count as corrected; drafts found (the project's, or batch's with the
        same classes and settings) make a to-do image drafted."""
        changed = False
        with self._mutex:
            for i, d in enumerate(self._data["images"]):
                if d["status"] in (Status.TODO.value, Status.DRAFTED.value) and not d.get("labels") \
                        and self.labels_path(i).is_file():
                    d.update(status=Status.CORRECTED.value, labels=f"{LABELS}/{d['name']}.tif")
                    changed = True
                elif d["status"] == Status.TODO.value and self.stored_draft(i) is not None:
                    d["status"] = Status.DRAFTED.value
                    changed = True
            if changed:
                self._save()
        return self

    def _set_drafted(self, index: int) -> None:
        with self._mutex:
            d = self._data["images"][index]
            if d["status"] == Status.TODO.value:
                d["status"] = Status.DRAFTED.value
                self._save()

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts().items() if n)
        return f"Project({str(self.folder)!r}: {len(self)} images, {counts})"


def _check_folder(folder: Path, source, paths: Sequence[Path]) -> None:
    """Refuse no images, and an output folder that is or contains a folder of the images."""
    from ..batch.jobs import check_out_dir

    if not paths:
        raise ProjectError(f"no image files in {source}")
    check_out_dir(sorted({p.parent for p in paths}), folder, "the output folder")


def _read_project(folder: Path) -> dict:
    path = folder / PROJECT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProjectError(f"cannot read the project file {path}: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ProjectError(f"{path} is not a MaskDiffusion project file")
    if not isinstance(data.get("version"), int) or data["version"] > VERSION:
        raise ProjectError(f"{path} has version {data.get('version')!r}; this software reads versions up to {VERSION}")
    try:
        as_class_specs(data["classes"])
        SegmentParams.from_dict(data["parameters"])
        for d in data["images"]:
            Status(d["status"]), d["path"], d["name"]
        float(data["memory"]["n0"]), bool(data["memory"]["enabled"])
    except (KeyError, TypeError, ValueError) as e:
        raise ProjectError(f"the project file {path} is inconsistent: {e}") from None
    return data


def _archive(folder: Path) -> Path:
    """Move a project's own files into ``previous-<time>/`` (batch's drafts stay)."""
    target = folder / time.strftime("previous-%Y%m%d-%H%M%S")
    n = 1
    while target.exists():
        n += 1
        target = target.with_name(f"{target.name.split('.')[0]}.{n}")
    target.mkdir()
    for name in (PROJECT_FILE, LABELS, DRAFTS, MEMORY):
        if (folder / name).exists():
            os.replace(folder / name, target / name)
    return target


def _write_marks(path: Path, edited: np.ndarray, shape) -> None:
    from ..geo.atomic import atomic_output

    if edited.shape != tuple(shape):
        raise ProjectError(f"the edited mask {edited.shape} does not match the labels {tuple(shape)}")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, edited=np.packbits(edited), shape=np.array(shape))


def read_marks(path: Path) -> np.ndarray | None:
    """The annotator's painted pixels saved with an image's labels, or ``None``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(n) for n in z["shape"])
            return np.unpackbits(z["edited"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    except (OSError, ValueError, KeyError):
        return None


def _write_contribution(path: Path, c: Contribution) -> None:
    from ..geo.atomic import atomic_output

    path.parent.mkdir(exist_ok=True)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, names=np.array(json.dumps(list(c.names))), sums=c.sums, counts=c.counts)


def _load_memory(folder: Path, n0: float) -> ClassMemory:
    memory = ClassMemory(n0)
    for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
        try:
            with np.load(path, allow_pickle=False) as z:
                memory.images[path.stem] = Contribution(tuple(json.loads(str(z["names"]))), z["sums"], z["counts"])
        except (OSError, ValueError, KeyError):
            continue
    return memory

"""Export the images of a project marked done, ready for training, with the class list.

- ``coco``: ``annotations.json``, one COCO JSON of every done image (RLE masks, category id =
  label value), ``file_name`` the image's path relative to the export folder.
- ``isprs``: ``NAME_label.tif``, colour-coded RGB labels as ISPRS ships Potsdam's (unlabelled
  black, the ignore colour), georeferenced like the image.
- ``folders``: ``images/`` (copies of the image files, world files included) and ``labels/``
  (label GeoTIFFs, 0 = unlabelled, k = k-th class) paired by name, and ``split.csv`` (image,
  label, train or val; the split follows a hash of the name, so it stays put as the dataset grows).

Every export writes ``classes.json`` (names, colours, label values). The files are committed
together: a failure leaves none of them, and files there before untouched.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..core.labels import label_values
from ..errors import BadInputError, OutputError
from .project import Project, Status, relative_path

__all__ = ["FORMATS", "export_project"]

FORMATS = ("coco", "isprs", "folders")
_WORLD_FILES = (".tfw", ".tifw", ".wld", ".jgw", ".pgw", ".prj")


def _split(name: str, val_fraction: float) -> str:
    h = int(hashlib.sha1(name.encode()).hexdigest()[:8], 16) / 2**32
    return "val" if h < val_fraction else "train"


def _copy(source: Path, target: Path) -> None:
    from ..geo.atomic import atomic_output

    def same_size(tmp: Path) -> None:
        if tmp.stat().st_size != source.stat().st_size:
            raise OutputError(f"cannot write {target}: the copy does not match {source}")

    with atomic_output(target, check=same_size) as tmp:
        shutil.copyfile(source, tmp)


def export_project(project: Project, out=None, format: str = "coco", *, val_fraction: float = 0.2,
                   overwrite: bool = False) -> list[Path]:
    """Write the images of ``project`` marked done in ``format`` into the folder ``out``.

    Parameters
    ----------
    project : Project (opened to read only is enough)
    out : path, optional
        The export folder (default ``OUTPUT/export-FORMAT``), made if missing.
    format : "coco", "isprs" or "folders" (see the module)
    val_fraction : float
        The share of images the ``folders`` split puts in ``val``.
    overwrite : bool
        Replace files an earlier export left; without it, their presence is an error.

    Returns
    -------
    The files written. Raises :class:`~maskdiffusion.errors.BadInputError` when no image is
    done or a target exists, :class:`~maskdiffusion.errors.OutputError` when the folder
    cannot be written (then nothing is left of the export).

    Examples
    --------
    >>> export_project(Project.open("survey/out", lock=False), format="folders")   # doctest: +SKIP
    """
    from ..geo.atomic import StagedOutputs, make_folder, write_json
    from ..geo.raster_io import read_image, write_isprs_rgb, write_labels

    if format not in FORMATS:
        raise BadInputError(f"export format must be one of {', '.join(FORMATS)}, got {format!r}")
    done = [e for e in project.images if e.status is Status.DONE and e.labels is not None]
    if not done:
        raise BadInputError(f"no image of the project in {project.folder} is marked done; nothing to export")
    out = Path(out) if out is not None else project.folder / f"export-{format}"
    classes = project.classes
    targets = {"classes": out / "classes.json"}
    if format == "coco":
        targets["coco"] = out / "annotations.json"
    elif format == "folders":
        targets["split"] = out / "split.csv"
    for e in done:
        if format == "isprs":
            targets[e.name] = out / f"{e.name}_label.tif"
        elif format == "folders":
            targets[e.name] = out / "labels" / f"{e.name}.tif"
            targets[e.name + "/image"] = out / "images" / e.path.name
    existing = [p for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise BadInputError(f"{existing[0]} exists (an earlier export?); pass overwrite (--overwrite) to replace it")
    make_folder(out)
    if format == "folders":
        make_folder(out / "labels")
        make_folder(out / "images")

    written = list(targets.values())
    with StagedOutputs():
        if format == "coco":
            from ..geo.exports import write_coco_images

            write_coco_images(targets["coco"], ((read_image(e.labels)[0], relative_path(e.path, out).replace("\\", "/"))
                                                for e in done), classes)
        for e in done if format != "coco" else ():
            labels, geo = read_image(e.labels)
            if format == "isprs":
                write_isprs_rgb(targets[e.name], labels, classes, geo)
                continue
            write_labels(targets[e.name], labels, classes, geo, {"label_values": label_values(classes),
                                                                 "image": f"../images/{e.path.name}"})
            _copy(e.path, targets[e.name + "/image"])
            for world in (e.path.with_suffix(s) for s in _WORLD_FILES):
                if world.is_file():
                    _copy(world, out / "images" / world.name)
                    written.append(out / "images" / world.name)
        if format == "folders":
            from ..geo.atomic import write_text

            rows = [f"images/{e.path.name},labels/{e.name}.tif,{_split(e.name, val_fraction)}" for e in done]
            write_text(targets["split"], "image,label,split\n" + "\n".join(rows) + "\n")
        write_json(targets["classes"], {"classes": [dict(c.to_dict(), value=k) for k, c in enumerate(classes, 1)],
                                        "label_values": label_values(classes)})
    return written

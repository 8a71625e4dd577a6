"""Annotate a dataset, not one image: a project of many images with one class list, a status
per image, drafts ready ahead, and corrections that teach the next drafts.

The Qt-free library behind the napari dock's dataset panel and ``maskdiffusion dataset`` /
``maskdiffusion export``:

- :class:`Project` (:mod:`.project`): create, open or resume a project in an output folder;
  ``project.images`` with their :class:`Status`, ``project.next_todo()``,
  ``project.save_labels(index, labels, classes)``, ``project.mark(index, status)``, the class
  memory (``project.memory``, ``project.reset_memory()``); a lock keeps a second window out.
- :func:`draft` (:mod:`.drafts`): a generator of progress returning the :class:`Draft` of an
  image (saved labels, a stored draft brought up to date with the memory, or a model run).
- :func:`export_project` (:mod:`.export`): the done images as COCO, ISPRS colour labels or
  image/label folders with a split.
"""

from .drafts import Draft, draft
from .export import FORMATS, export_project
from .lock import ProjectLockedError
from .project import PROJECT_FILE, ImageEntry, Project, ProjectError, ProjectMismatchError, Status

__all__ = ["FORMATS", "PROJECT_FILE", "Draft", "ImageEntry", "Project", "ProjectError", "ProjectLockedError",
           "ProjectMismatchError", "Status", "draft", "export_project"]

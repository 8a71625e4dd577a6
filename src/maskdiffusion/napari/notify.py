"""How the dock tells the annotator that something went wrong: one line for what we raise on
purpose, napari's traceback notification for a bug."""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info

from ..errors import MaskDiffusionError

__all__ = ["report", "say"]


def report(exc: BaseException, what: str = "MaskDiffusion") -> None:
    """One clear notification for bad input or a failed write, the traceback for anything else."""
    if isinstance(exc, MaskDiffusionError):
        show_error(f"{what}: {exc}")
        return
    from napari.utils.notifications import notification_manager

    notification_manager.receive_error(type(exc), exc, exc.__traceback__)


def say(message: str) -> None:
    """One line to the annotator about what the dock did (a class deleted, nothing to undo)."""
    show_info(message)

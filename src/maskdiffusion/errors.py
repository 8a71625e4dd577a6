"""The errors we raise on purpose: one base class, mapped by every face to its way of saying so.

The command line prints ``str(error)`` on one line and exits with ``error.exit_code``; the
napari dock shows it as one notification. Anything else that escapes is a bug and keeps its
traceback. Bad input subclasses :class:`ValueError` as well, so plain Python callers can keep
catching ``ValueError``. :class:`RunInterrupted` is the exception: it is a
:class:`KeyboardInterrupt`, as Ctrl-C's is, so that no ``except Exception`` swallows a stop.

=====================  =========  ==============================================================
class                  exit code  meaning
=====================  =========  ==============================================================
BadInputError          2          the user asked for something that cannot be done as given
OutputError            1          an output could not be written (disk full, permissions...)
RunInterrupted         130        Ctrl-C (SIGTERM: 143); nothing half-written is left
=====================  =========  ==============================================================
"""

from __future__ import annotations

__all__ = ["BadInputError", "MaskDiffusionError", "NeedsFeaturesError", "OutputError", "RunInterrupted"]


class MaskDiffusionError(Exception):
    """Base of every error this package raises on purpose; the message is one sentence."""

    exit_code = 1


class BadInputError(MaskDiffusionError, ValueError):
    """Input, options or files that cannot be used as given (exit status 2)."""

    exit_code = 2


class NeedsFeaturesError(BadInputError):
    """Refinement or a class change asked of an annotation that has no model features (one
    opened from a label file, say)."""

    message = "Refine needs the model's features: run the model on this image, or open the session"

    def __init__(self, message: str | None = None):
        super().__init__(message or self.message)


class OutputError(MaskDiffusionError, OSError):
    """An output that could not be written completely; nothing of it was left behind (exit 1)."""

    exit_code = 1


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM from ``docker stop`` or Slurm, say), handled as
    Ctrl-C is: ``exit_code`` is 128 + the signal number."""

    def __init__(self, message: str = "interrupted", exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code

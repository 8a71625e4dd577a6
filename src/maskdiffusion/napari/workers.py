"""The dock's background work: napari ``thread_worker``s started in one way, and what they run
(loading the model, building refinement caches; segmenting is the engine's
:func:`~maskdiffusion.engine.iter_segment_planes`).

What runs here never touches Qt widgets. torch is imported on first use, on the worker.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

__all__ = ["load", "make_worker", "prepare_sessions", "start"]


def make_worker(work: Callable, *args, **signals):
    """A napari worker (not started) for ``work(*args)``, a function or a generator function,
    with ``signals`` connected by name (``returned=``, ``errored=``, ``yielded=``, ``aborted=``,
    ``finished=``); errors go to ``errored`` only."""
    from napari.qt.threading import create_worker

    worker = create_worker(work, *args, _start_thread=False, _ignore_errors=True)
    for name, callback in signals.items():
        if callback is not None and hasattr(worker, name):
            getattr(worker, name).connect(callback)
    return worker


def start(worker, sync: bool = False):
    """Start ``worker`` on its thread, or with ``sync`` run it here, signals and all (tests whose
    point is not the thread); returns it."""
    if sync:
        worker.run()
    else:
        worker.start()
    return worker


def load(source: str, device: str, precision: str):
    """Load the model (cached per source, device and precision) with a core spared.

    Loading makes ~0.5 M objects at once; the garbage collections they trip would each hold
    the interpreter 0.1–0.2 s on this thread. Collections are off meanwhile, and what the load
    made is moved out of later collections' walk (``gc.freeze``) once it is done.
    """
    from ..model.loading import load_model, resolve_device, spare_one_core

    enabled = gc.isenabled()
    gc.disable()
    try:
        with spare_one_core(resolve_device(device)):
            return load_model(source, device, None if precision == "auto" else precision)
    finally:
        if enabled:
            gc.freeze()
            gc.enable()


def prepare_sessions(sessions: Sequence) -> None:
    """Build the sessions' refinement caches with a core spared (run as soon as a run is shown,
    so the first Refine waits for nothing the annotator has not already spent painting)."""
    from ..model.loading import spare_one_core

    with spare_one_core("cpu"):
        for session in sessions:
            session.prepare()

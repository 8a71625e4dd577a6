"""The dock's background work: napari ``thread_worker``s started in one way, and what they run
(loading the model, segmenting the planes of an image, building refinement caches).

What runs here never touches Qt widgets; it yields progress and stops between tiles when the
worker is quit. torch is imported on first use, on the worker.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["PlaneStarted", "load", "make_worker", "prepare_sessions", "segment_planes", "spare_one_core", "start"]


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


@dataclass(frozen=True)
class PlaneStarted:
    """Yielded before each plane of a stack: plane number ``index`` of ``count``."""

    index: int
    count: int


@contextmanager
def spare_one_core(device) -> Iterator[None]:
    """On the CPU, run torch on all cores but one: the interface keeps a core and stays responsive.

    Oversubscribed cores (torch's threads spinning on every core) froze napari for 100-500 ms at a
    time in ``benchmarks/bench_ui_responsiveness.py``; one core fewer costs little compute.
    """
    import torch

    cores = os.cpu_count() or 1
    if torch.device(device).type != "cpu" or cores < 2:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, cores - 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load(source: str, device: str, precision: str):
    """Load the model (cached per source, device and precision) with a core spared.

    Loading makes ~0.5 M objects at once; the garbage collections they trip would each hold
    the interpreter 0.1–0.2 s on this thread. Collections are off meanwhile, and what the load
    made is moved out of later collections' walk (``gc.freeze``) once it is done.
    """
    from ..model.loading import load_model, resolve_device

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
    with spare_one_core("cpu"):
        for session in sessions:
            session.prepare()


def segment_planes(read_plane: Callable, planes: Sequence[tuple[int, ...]], classes, model, params):
    """Segment each plane: yield :class:`PlaneStarted` and the engine's progress steps, return
    ``{plane: result}`` (results keep their features for refinement)."""
    from ..engine import iter_segment

    results = {}
    with spare_one_core(model.device):
        for i, plane in enumerate(planes):
            yield PlaneStarted(i, len(planes))
            results[plane] = yield from iter_segment(read_plane(plane), classes, model, params, keep_features=True)
    return results

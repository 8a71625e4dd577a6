"""The dock's background work, Qt-free: loading the model, segmenting the planes of an image and
building their refinement caches.

These run inside napari ``thread_worker`` generators: they yield progress (and never touch Qt
widgets) and stop between tiles when the worker is quit. torch is imported here, on first use.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .garbage import paused

__all__ = ["PlaneStarted", "load", "open_torch_libraries", "prepare_sessions", "segment_planes", "spare_one_core"]


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


def open_torch_libraries() -> list[str]:
    """Open torch's core C++ libraries with the interpreter lock released, before ``import
    torch`` opens them holding it; returns the libraries opened.

    Opening ``libtorch_cpu`` runs its static initialisers (every operator registered): 0.2–0.4 s
    here, during which no other thread runs Python, so the window froze on a first model load.
    Opened beforehand through libc's ``dlopen`` (a foreign call, made without the lock), the
    import finds them loaded. Local scope, as the import would open them; nothing is done once
    torch is imported, on Windows, or when the files are not where the wheel puts them.
    """
    if "torch" in sys.modules or os.name != "posix":
        return []
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / "lib"
    suffix = ".dylib" if sys.platform == "darwin" else ".so"
    dlopen = ctypes.CDLL(None).dlopen
    dlopen.argtypes, dlopen.restype = [ctypes.c_char_p, ctypes.c_int], ctypes.c_void_p
    opened = []
    for name in ("libc10", "libtorch_cpu"):
        path = folder / f"{name}{suffix}"
        if path.is_file() and dlopen(os.fsencode(path), os.RTLD_NOW | os.RTLD_LOCAL):
            opened.append(path.name)
    return opened


def load(source: str, device: str, precision: str):
    """Load the model (cached per source, device and precision) with a core spared and the
    garbage collector :func:`~.garbage.paused`, torch's libraries opened first without the
    interpreter lock (:func:`open_torch_libraries`)."""
    open_torch_libraries()
    from ..model.loading import load_model, resolve_device

    with spare_one_core(resolve_device(device)), paused():
        return load_model(source, device, None if precision == "auto" else precision)


def prepare_sessions(sessions: Sequence) -> None:
    """Build the sessions' refinement caches with a core spared (run as soon as a run is shown,
    so the first Refine waits for nothing the annotator has not already spent painting)."""
    with spare_one_core("cpu"):
        for session in sessions:
            session.prepare()


def _warm_up_labels() -> None:
    """Build a throwaway Labels model and vispy's dash patterns here, so that their first use
    (imports of pandas and scikit-image; 85 ms of patterns for the first Labels visual's
    outline, cached for the process) does not freeze the interface when the class layers are
    added on the main thread."""
    import numpy as np
    from napari.layers import Labels
    from vispy.visuals.line.dash_atlas import DashAtlas

    Labels(np.zeros((1, 1), np.uint8))
    DashAtlas()


def segment_planes(read_plane: Callable, planes: Sequence[tuple[int, ...]], classes, model, params):
    """Segment each plane: yield :class:`PlaneStarted` and the engine's progress steps, return
    ``{plane: result}`` (results keep their features for refinement)."""
    from ..engine import iter_segment

    _warm_up_labels()
    results = {}
    with spare_one_core(model.device):
        for i, plane in enumerate(planes):
            yield PlaneStarted(i, len(planes))
            results[plane] = yield from iter_segment(read_plane(plane), classes, model, params, keep_features=True)
    return results

"""Does napari stay responsive while the annotator runs? Longest gap between Qt timer ticks.

The MaskDiffusion widget segments one 512×512 tile with the full SD 1.5-sized random-weight
model (``build_random_sd(folder, "sd15")``: the cost is the real one) on the CPU, in its
``thread_worker``. A 10 ms ``QTimer`` on the main thread records when it fires; the longest
gap between two ticks while the worker runs (and while the model loads) is how long the
interface froze. Goal: under 100 ms while the worker runs. Adding the layers at the end
happens on the main thread (napari's own cost, one layer per event-loop turn) and is reported
apart, as is loading the model.

Needs a display: ``xvfb-run -a python benchmarks/bench_ui_responsiveness.py``.
Prints one JSON object. ``--model-dir DIR`` keeps (or reuses) the 4 GB model folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

GOAL_MS = 100.0
TICK_MS = 10


class TickRecorder:
    """Timestamps of a Qt timer's ticks on the main thread, between start() and stop()."""

    def __init__(self):
        from qtpy.QtCore import QTimer

        self.times: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(TICK_MS)
        self.timer.timeout.connect(lambda: self.times.append(time.perf_counter()))

    def start(self):
        self.times = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.times.append(time.perf_counter())

    def stats(self, start: float | None = None, end: float | None = None) -> dict:
        """Gap statistics for the gaps that end after ``start`` and begin before ``end``."""
        start = self.times[0] if start is None else start
        end = self.times[-1] if end is None else end
        pairs = [(a, b) for a, b in zip(self.times, self.times[1:]) if a >= start and b <= end]
        gaps = [(b - a) * 1000 for a, b in pairs]
        gaps_sorted = sorted(gaps)
        longest = sorted(pairs, key=lambda p: p[0] - p[1])[:3]
        return {
            "seconds": round(end - start, 2),
            "ticks": len(gaps),
            "max_gap_ms": round(max(gaps), 1),
            "p99_gap_ms": round(gaps_sorted[int(0.99 * (len(gaps) - 1))], 1),
            "median_gap_ms": round(statistics.median(gaps), 1),
            "longest_at_s": [[round(a - self.times[0], 2), round((b - a) * 1000)] for a, b in longest],
        }


class GcRecorder:
    """Durations of Python's garbage collections (they hold the GIL, and so the interface)."""

    def __init__(self):
        self.pauses: list[tuple[float, int, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, info["generation"], (time.perf_counter() - self._start) * 1000))

    def stats(self, start: float, end: float) -> dict:
        inside = [p for p in self.pauses if start <= p[0] <= end]
        longest = max(inside, key=lambda p: p[2], default=None)
        return {
            "collections": len(inside),
            "longest_ms": round(longest[2], 1) if longest else 0.0,
            "longest_generation": longest[1] if longest else None,
            "longest_at_s": round(longest[0] - start, 2) if longest else None,
        }


def wait(app, condition, timeout_s: float) -> None:
    end = time.perf_counter() + timeout_s
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError(f"still waiting after {timeout_s:.0f} s")
        app.processEvents()
        time.sleep(0.001)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", help="folder for the SD 1.5-sized random model (built there if empty)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed for loading and for the run")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    import napari
    from maskdiffusion.geo.synthetic import make_potsdam_like_tile
    from maskdiffusion.model.random_sd import build_random_sd
    from maskdiffusion.napari import layers as L
    from maskdiffusion.napari.widget import MaskDiffusionWidget

    os.environ.setdefault("NAPARI_MASKDIFFUSION_CONFIG_DIR", tempfile.mkdtemp(prefix="md-settings-"))
    keep = args.model_dir is not None
    folder = Path(args.model_dir or tempfile.mkdtemp(prefix="md-sd15-")) / "sd15-random"
    t0 = time.perf_counter()
    if not (folder / "model_index.json").is_file():
        build_random_sd(folder, "sd15", seed=0)
    build_s = time.perf_counter() - t0

    try:
        viewer = napari.Viewer(show=True)
        app = napari.qt.get_qapp()
        image, _ = make_potsdam_like_tile(512, seed=0)
        viewer.add_image(image[..., :3], rgb=True, name="tile")
        widget = MaskDiffusionWidget(viewer)
        viewer.window.add_dock_widget(widget, name="MaskDiffusion")
        widget.source_combo.setCurrentText(str(folder))
        widget.device_combo.setCurrentText("cpu")
        widget.precision_combo.setCurrentText("float32")
        widget.set_classes(["impervious surfaces", "building", "low vegetation", "tree", "car", "clutter"])
        widget.tile_spin.setValue(512)
        app.processEvents()

        applied: list[float] = []
        apply_layer_data = L.apply_layer_data

        def timed_apply(*a, **kw):
            applied.append(time.perf_counter())
            return apply_layer_data(*a, **kw)

        L.apply_layer_data = timed_apply

        ticks = TickRecorder()
        collections = GcRecorder()
        ticks.start()
        widget.load_model()
        wait(app, lambda: not widget.loading, args.timeout)
        ticks.stop()
        load = ticks.stats()
        if not widget.model_ready:
            raise RuntimeError(f"the model did not load: {widget.model_status.text()}")

        ticks.start()
        widget.run()
        wait(app, lambda: not widget.running, args.timeout)
        ticks.stop()
        if not applied:
            raise RuntimeError(f"the run added no layers: {widget.status.text()}")
        gc_run = collections.stats(ticks.times[0], applied[0])
        worker_phase = ticks.stats(end=applied[0])
        adding_phase = ticks.stats(start=max(t for t in ticks.times if t <= applied[0]))
        whole = ticks.stats()
        n_layers = len(viewer.layers)
        viewer.close()
    finally:
        if not keep:
            shutil.rmtree(folder.parent, ignore_errors=True)

    result = {
        "benchmark": "ui_responsiveness",
        "model": "SD 1.5 sizes, random weights",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "tile": 512,
        "classes": 6,
        "tick_interval_ms": TICK_MS,
        "build_model_s": round(build_s, 1),
        "load": load,
        "while_worker_runs": worker_phase,
        "gc_while_worker_runs": gc_run,
        "adding_layers": adding_phase,
        "whole_run": whole,
        "layers_added": n_layers - 1,
        "goal_max_gap_ms": GOAL_MS,
        "pass": worker_phase["max_gap_ms"] < GOAL_MS,
        "numpy": np.__version__,
        "napari": napari.__version__,
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

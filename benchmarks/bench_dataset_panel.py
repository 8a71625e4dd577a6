"""The dock's Dataset tab over many images: Next to a draft on screen, and memory, image after image.

A folder of N synthetic 256² images (default 50), the tiny random-weight model, one draft made
ahead. For each image: one stroke, then **Next** once the next draft is ready (as when the
annotator corrects longer than a draft takes): ``next_to_draft_ms`` is the time from the click to
the next image's draft shown in the layers (its map written into them, the layers editable); the
process memory (RSS) is read after each image. Goals: under 1 s from Next to a ready draft on
screen; memory flat within 10% from the 10th image to the last.

Needs a display: ``xvfb-run -a python benchmarks/bench_dataset_panel.py [--images 50]``. Prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_ui_responsiveness import rss_mb, wait  # run as a script: its folder is on the path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)

    import gc

    import napari
    import numpy as np
    from PIL import Image

    from maskdiffusion.geo.synthetic import make_potsdam_like_tile
    from maskdiffusion.model.random_sd import build_random_sd
    from maskdiffusion.napari.dock import AnnotatorDock
    from maskdiffusion.napari.layers import STROKE

    work = Path(tempfile.mkdtemp(prefix="md-dataset-bench-"))
    os.environ.setdefault("NAPARI_MASKDIFFUSION_CONFIG_DIR", str(work / "config"))
    try:
        (work / "images").mkdir()
        for i in range(args.images):
            tile = make_potsdam_like_tile(args.size, seed=i)[0][..., :3]
            Image.fromarray(np.ascontiguousarray(tile)).save(work / "images" / f"tile_{i:03d}.png")
        model_dir = build_random_sd(work / "tiny-sd", "tiny", seed=0)
        viewer = napari.Viewer(show=True)
        viewer.window._qt_window.resize(1600, 1000)
        app = napari.qt.get_qapp()
        dock = AnnotatorDock(viewer)
        viewer.window.add_dock_widget(dock, name="MaskDiffusion")
        box = dock.segment.model_box
        box.source_combo.setCurrentText(str(model_dir))
        box.device_combo.setCurrentText("cpu")
        box.load()
        wait(app, lambda: box.ready, 600)
        dock.segment.set_classes(["impervious surfaces", "building", "low vegetation", "tree"])
        dock.segment.parameters["tile_size"].value = args.size
        panel = dock.dataset
        panel.images_edit.setText(str(work / "images"))
        panel.output_edit.setText(str(work / "out"))
        panel.open_project()
        wait(app, lambda: panel.shown == 0 and panel.annotation.idle, 600)
        latencies, memory = [], []
        for i in range(args.images - 1):
            layer = viewer.layers["tree"]
            layer.selected_label = STROKE
            layer.paint((20 + i % 100, 20 + i % 100), STROKE)
            wait(app, lambda: panel.annotation.session().history, 600)
            wait(app, lambda i=i: (i + 1) in panel.drafts, 600)  # the next draft is ready
            start = time.perf_counter()
            panel.next_button.click()
            wait(app, lambda i=i: panel.shown == i + 1 and panel.annotation.idle, 600)
            latencies.append((time.perf_counter() - start) * 1000)
            gc.collect()
            memory.append(rss_mb())
        wait(app, lambda: not panel._drafting, 600)
        statuses = panel.project.counts()
        viewer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tenth = memory[min(9, len(memory) - 1)]
    result = {
        "benchmark": "dataset_panel", "images": args.images, "size": args.size, "model": "tiny, random weights",
        "next_to_draft_ms": {"median": round(statistics.median(latencies)), "max": round(max(latencies)),
                             "goal": 1000},
        "rss_mb": {"after_image_1": round(memory[0]), "after_image_10": round(tenth), "last": round(memory[-1]),
                   "growth_from_10th_to_last": round(memory[-1] / tenth - 1, 3), "goal": 0.10},
        "statuses": statuses, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "python": sys.version.split()[0],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

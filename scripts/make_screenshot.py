"""Make ``docs/screenshot.png``, ``docs/screenshot_refine.png`` and ``docs/screenshot_dataset.png``:
the annotator's tabs on the NEON sample at 1600×1000, run with the tiny test model.

Builds the tiny random-weight model in a temporary folder (no download), opens napari (under
Xvfb when there is no display: the script re-runs itself through ``xvfb-run``), opens
File › Open Sample › NEON OSBS, docks the annotator from the plugin's manifest, runs it, paints
one stroke, refines, and grabs the whole window on each tab; then opens a project of both NEON
samples and a few synthetic tiles in the Dataset tab, corrects the first image and goes to the
next. The masks of a random-weight model are meaningless: the pictures show the interface, not a
segmentation.

Usage: python scripts/make_screenshot.py [--out docs/screenshot.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTION = (
    "The MaskDiffusion annotator on the NEON OSBS sample (10 cm aerial RGB, CC0 NEON): one editable "
    "Labels layer per class. These masks come from the tiny random-weight test model and are "
    "meaningless; real Stable Diffusion weights give a real draft segmentation."
)
CLASSES = ["tree", "grass", "sand", "road"]


def _ensure_display() -> None:
    if os.environ.get("DISPLAY") or os.environ.get("MD_SCREENSHOT_XVFB"):
        return
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        sys.exit("no display and no xvfb-run: install Debian's xvfb, or run with a display")
    os.environ["MD_SCREENSHOT_XVFB"] = "1"
    os.execv(xvfb, [xvfb, "-a", "-s", "-screen 0 1600x1000x24", sys.executable, *sys.argv])


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    args = parser.parse_args(argv)
    _ensure_display()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings_dir = tempfile.mkdtemp(prefix="md-settings-")
    os.environ.setdefault("NAPARI_MASKDIFFUSION_CONFIG_DIR", settings_dir)
    os.environ["NAPARI_CONFIG"] = os.path.join(settings_dir, "napari.yaml")  # leave the user's napari settings alone

    import napari

    from maskdiffusion.model.random_sd import build_random_sd

    work = Path(tempfile.mkdtemp(prefix="md-screenshot-"))
    out = Path(args.out)
    try:
        model_dir = build_random_sd(work / "tiny-sd", "tiny", seed=0)
        viewer = napari.Viewer(show=True, title="napari-maskdiffusion")
        viewer.window._qt_window.resize(1600, 1000)
        viewer.open_sample("napari-maskdiffusion", "neon_osbs")
        _, dock = viewer.window.add_plugin_dock_widget("napari-maskdiffusion", "MaskDiffusion annotator")
        box = dock.segment.model_box
        box.source_combo.setCurrentText(str(model_dir))
        box.device_combo.setCurrentText("cpu")
        dock.segment.set_classes(CLASSES)
        app = napari.qt.get_qapp()
        box.load()
        _wait(app, lambda: not box.loading)
        if not box.ready:
            raise RuntimeError(f"the tiny model did not load: {box.status.text()}")
        dock.segment.run()
        _wait(app, lambda: not dock.segment.running)
        tree = viewer.layers[CLASSES[0]]
        viewer.layers.selection.active = tree
        tree.mode = "paint"
        viewer.reset_view()
        _hide_notifications(viewer)
        _wait(app, lambda: False, seconds=1.0, fail=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.window._qt_window.grab().save(str(out))
        road = viewer.layers[CLASSES[-1]]
        road.brush_size = 30
        for point in ((150, 120), (170, 150), (190, 180)):
            road.paint(point, road.selected_label)
        _wait(app, lambda: False, seconds=0.3, fail=False)
        dock.tabs.setCurrentIndex(1)
        dock.refine.reset_choices()
        dock.refine.refine()
        _wait(app, lambda: dock.refine._worker is None and dock.refine._writing is None)
        _hide_notifications(viewer)
        _wait(app, lambda: False, seconds=1.0, fail=False)
        viewer.window._qt_window.grab().save(str(out.with_name(out.stem + "_refine" + out.suffix)))
        _dataset_screenshot(viewer, dock, app, work, out.with_name(out.stem + "_dataset" + out.suffix))
        viewer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{out}\n{CAPTION}")
    return out


def _dataset_screenshot(viewer, dock, app, work: Path, out: Path) -> None:
    """The Dataset tab after the first image of a small project was corrected and Next pressed."""
    from PIL import Image

    from maskdiffusion.geo.synthetic import make_potsdam_like_tile
    from maskdiffusion.napari.layers import STROKE
    from maskdiffusion.napari.samples import SAMPLE_DIR

    images = work / "survey"
    images.mkdir()
    for sample in sorted(SAMPLE_DIR.glob("neon_*.tif")):
        shutil.copy(sample, images / sample.name)
    for i in range(4):
        Image.fromarray(make_potsdam_like_tile(400, seed=i)[0][..., :3]).save(images / f"synthetic_{i}.png")
    while len(viewer.layers):
        viewer.layers.remove(viewer.layers[-1])
        _wait(app, lambda: False, seconds=0.2, fail=False)
    panel = dock.dataset
    dock.tabs.setCurrentWidget(panel)
    panel.images_edit.setText(str(images))
    panel.output_edit.setText(str(work / "survey_labels"))
    panel.open_project()
    _wait(app, lambda: panel.shown == 0 and panel.annotation.idle)
    tree = viewer.layers[CLASSES[0]]
    tree.brush_size = 30
    tree.selected_label = STROKE
    for point in ((100, 100), (120, 140)):
        tree.paint(point, STROKE)
    _wait(app, lambda: panel.annotation.session().history)
    panel.next_button.click()
    _wait(app, lambda: panel.shown == 1 and not panel._drafting
          and panel.project.entry(0).status.value == "corrected")
    viewer.reset_view()
    _hide_notifications(viewer)
    _wait(app, lambda: False, seconds=1.0, fail=False)
    viewer.window._qt_window.grab().save(str(out))


def _hide_notifications(viewer) -> None:
    """Close napari's pop-up notifications so they do not cover the picture."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for popup in viewer.window._qt_window.findChildren(NapariQtNotification):
        popup.close()


def _wait(app, condition, seconds: float = 600, fail: bool = True) -> None:
    end = time.perf_counter() + seconds
    while not condition():
        if time.perf_counter() > end:
            if fail:
                raise TimeoutError(f"gave up after {seconds:.0f} s")
            return
        app.processEvents()
        time.sleep(0.01)


if __name__ == "__main__":
    main()

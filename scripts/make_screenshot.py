"""Make ``docs/screenshot.png`` and ``docs/screenshot_refine.png``: the annotator's two tabs on
the NEON sample at 1600×1000, run with the tiny test model.

Builds the tiny random-weight model in a temporary folder (no download), opens napari (under
Xvfb when there is no display: the script re-runs itself through ``xvfb-run``), opens
File › Open Sample › NEON OSBS, docks the annotator from the plugin's manifest, runs it, paints
one stroke, refines, and grabs the whole window on each tab. The masks of a random-weight model
are meaningless: the pictures show the interface, not a segmentation.

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
        viewer.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{out}\n{CAPTION}")
    return out


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

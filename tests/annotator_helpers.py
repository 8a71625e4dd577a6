"""What the napari tests do as a person would: dock the annotator, run, paint, press keys, wait."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from maskdiffusion.napari import layers

PLUGIN = "napari-maskdiffusion"
CLASSES = ["tree", "ground", "road"]
TIMEOUT_MS = 120_000
#: The marks of a test module on a real napari window.
GUI = [
    pytest.mark.gui,
    pytest.mark.skipif(sys.platform.startswith("linux") and not os.environ.get("DISPLAY"),
                       reason="needs a display: run under xvfb-run -a (napari's canvas needs OpenGL)"),
]


def dock_with_model_chosen(viewer, model_dir, synchronous: bool = True):
    """The annotator docked, the model chosen (on the CPU, fp32) but not loaded. ``synchronous``
    runs its workers on the test's thread (tests whose point is not the thread)."""
    from maskdiffusion.napari.dock import AnnotatorDock

    dock = AnnotatorDock(viewer)
    dock.state.synchronous = synchronous
    viewer.window.add_dock_widget(dock, name="MaskDiffusion")
    box = dock.segment.model_box
    box.source_combo.setCurrentText(str(model_dir))
    box.device_combo.setCurrentText("cpu")
    box.precision_combo.setCurrentText("fp32")
    return dock


def make_dock(viewer, qtbot, model_dir, classes=CLASSES, tile=256, synchronous: bool = True):
    dock = dock_with_model_chosen(viewer, model_dir, synchronous)
    box = dock.segment.model_box
    box.load()
    qtbot.waitUntil(lambda: not box.loading, timeout=TIMEOUT_MS)
    assert box.ready
    dock.segment.set_classes(classes)
    dock.segment.parameters["tile_size"].value = tile
    dock.segment.parameters["overlap"].value = 0
    return dock


def wait_idle(dock, qtbot):
    """Until no run, refinement, write or class change of the dock is in flight."""
    qtbot.waitUntil(lambda: not dock.segment.running and dock.refine._worker is None and dock.refine._writing is None
                    and all(a.idle and not a.pending_deletions for a in dock.state.annotations.values()),
                    timeout=TIMEOUT_MS)


def run_and_wait(dock, qtbot):
    """Run the Segment tab as a click on Run does; the image's annotation once it is shown."""
    assert dock.segment.run_button.isEnabled(), dock.segment.run_button.toolTip()
    dock.segment.run_button.click()
    wait_idle(dock, qtbot)
    return dock.state.annotation_of(dock.segment.image_layer())


def one_class_per_pixel(annotation, plane=()) -> bool:
    """Every pixel is in at most one class layer, and the layers show the session's map."""
    stack = np.stack([np.asarray(ly.data[plane]) != 0 for ly in annotation.ordered_layers()])
    shown = np.where(stack.any(0), stack.argmax(0) + 1, 0)
    return bool((stack.sum(0) <= 1).all() and np.array_equal(shown, annotation.session(plane).labels))


def stroke(qtbot, dock, layer, points, label=layers.STROKE, size=12):
    """Paint as a person does (napari announces the stroke, the dock takes it at the next turn)
    and wait until the annotation has taken it."""
    layer.brush_size = size
    layer.selected_label = label
    for point in points:
        layer.paint(point, label)
    annotation = dock.state.annotation_of(layer)
    qtbot.waitUntil(lambda: annotation.read_strokes(layer, annotation.current_plane()) is None, timeout=5000)


def press(viewer, qtbot, key, modifier):
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier)


def class_names(annotation) -> list[str]:
    return [spec.name for _, spec in annotation.classes]

"""npe2 commands (Layers › Segment and the command palette) on the viewer's layers."""

from __future__ import annotations

from napari.viewer import Viewer

from .layers import merge_class_layers as merge_layers
from .layers import split_semantic_layer as split_layer

__all__ = ["merge_class_layers", "split_semantic_layer"]


def merge_class_layers(viewer: Viewer) -> None:
    """Merge class layers into one semantic map (the layer drawn on top wins an overlap)."""
    merge_layers(viewer)


def split_semantic_layer(viewer: Viewer) -> None:
    """Split the active semantic map into one binary Labels layer per class."""
    split_layer(viewer)

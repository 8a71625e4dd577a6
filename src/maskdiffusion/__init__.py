"""napari-maskdiffusion: zero-shot semantic segmentation from class names with a frozen Stable
Diffusion (MaskDiffusion, ECCV 2024), as a Python API, a command line and a napari annotator.

Heavy modules (torch, diffusers) load on first use, so ``import maskdiffusion`` is fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "ClassSpec": "maskdiffusion.core.classes",
    "preset_classes": "maskdiffusion.core.classes",
    "SegmentParams": "maskdiffusion.core.params",
    "SegmentationResult": "maskdiffusion.core.result",
    "Progress": "maskdiffusion.core.result",
    "segment": "maskdiffusion.engine",
    "iter_segment": "maskdiffusion.engine",
    "load_model": "maskdiffusion.model.loading",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskdiffusion' has no attribute {name!r}")

"""The user's cache folder for what this package builds itself: random-weight models and
OpenVINO's converted models (IR).

``platformdirs.user_cache_dir("napari-maskdiffusion")`` (``~/.cache/napari-maskdiffusion`` on
Linux, ``$XDG_CACHE_HOME`` honoured); the environment variable ``MASKDIFFUSION_CACHE_DIR``
names another folder (the test suite points it at a temporary one).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_folder"]

CACHE_ENV = "MASKDIFFUSION_CACHE_DIR"


def cache_folder() -> Path:
    """The cache folder, read from the environment now (it may not exist yet)."""
    named = os.environ.get(CACHE_ENV)
    if named:
        return Path(named).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-maskdiffusion"))

"""Shared fixtures: the tiny random-weight SD-layout model (SPEC §4), built once per session.

The package's cache folder is a temporary one for the session (and every process it starts),
never the user's; ``backend`` ``auto`` stays on PyTorch (``MASKDIFFUSION_OPENVINO=0``) so
that only the OpenVINO tests convert the model (tests/test_openvino_backend.py).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from maskdiffusion.model.cache_folder import CACHE_ENV
from potsdam_fixture import potsdam_tile  # noqa: F401  (the fixture, for every test module)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["MASKDIFFUSION_OPENVINO"] = "0"
os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="maskdiffusion-test-cache-")
atexit.register(shutil.rmtree, os.environ[CACHE_ENV], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD 1.x-layout model saved as a diffusers folder."""
    from maskdiffusion.model.random_sd import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("models") / "tiny-sd", "tiny", seed=0)

"""Shared fixtures: the tiny random-weight SD-layout model (SPEC §4), built once per session."""

from __future__ import annotations

import os

import pytest

from potsdam_fixture import potsdam_tile  # noqa: F401  (the fixture, for every test module)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random SD 1.x-layout model saved as a diffusers folder."""
    from maskdiffusion.model.random_sd import build_random_sd

    return build_random_sd(tmp_path_factory.mktemp("models") / "tiny-sd", "tiny", seed=0)

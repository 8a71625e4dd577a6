"""A small synthetic ISPRS Potsdam tile on disk, shared by the geo and evaluation tests."""

from __future__ import annotations

import pytest

from maskdiffusion.geo.synthetic import write_potsdam_like

TILE_SIZE = 192


@pytest.fixture(scope="session")
def potsdam_tile(tmp_path_factory):
    """Paths of ``top_potsdam_2_10_RGBIR.tif`` + ``.tfw`` and its two RGB-coded labels."""
    return write_potsdam_like(tmp_path_factory.mktemp("potsdam"), size=TILE_SIZE, seed=0)

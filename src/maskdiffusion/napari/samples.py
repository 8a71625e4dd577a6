"""npe2 sample data: two NEON aerial RGB tiles and a synthetic Potsdam-like RGBIR tile."""

from __future__ import annotations

from pathlib import Path

from ..core.classes import preset_classes
from .images import image_layer_data
from .layers import semantic_layer_data

__all__ = ["neon_osbs", "neon_sjer", "potsdam_like"]

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "sample_data"
_NEON = {"credit": "NEON (National Ecological Observatory Network), CC0", "license": "CC0-1.0"}


def _neon(filename: str) -> list[tuple]:
    from ..geo.raster_io import read_image

    image, geo = read_image(SAMPLE_DIR / filename)
    layers = image_layer_data(image, geo, Path(filename).stem)
    for _, kwargs, _ in layers:
        kwargs["metadata"] = {**kwargs.get("metadata", {}), **_NEON}
    return layers


def neon_osbs() -> list[tuple]:
    """NEON OSBS (Florida) 10 cm aerial RGB, 400x400, georeferenced."""
    return _neon("neon_OSBS_029.tif")


def neon_sjer() -> list[tuple]:
    """NEON SJER (California, 2018) 10 cm aerial RGB, 400x400, georeferenced."""
    return _neon("neon_SJER_2018_477.tif")


def potsdam_like(size: int = 512, seed: int = 0) -> list[tuple]:
    """A synthetic Potsdam-like RGBIR tile with its ground truth (Potsdam's 6 classes)."""
    from ..geo.raster_io import POTSDAM_CRS, GeoInfo
    from ..geo.synthetic import POTSDAM_ORIGIN, POTSDAM_PIXEL_SIZE, make_potsdam_like_tile

    image, truth = make_potsdam_like_tile(size, seed)
    x0, y0 = POTSDAM_ORIGIN
    geo = GeoInfo(POTSDAM_CRS, (POTSDAM_PIXEL_SIZE, 0.0, x0, 0.0, -POTSDAM_PIXEL_SIZE, y0), None, ("R", "G", "B", "IR"))
    note = {"credit": "synthetic (maskdiffusion.geo.synthetic), not ISPRS data", "seed": seed}
    layers = image_layer_data(image, geo, "potsdam-like RGBIR", note)
    gt_meta = {**note, "georeference": geo.to_dict(), "image": layers[0][1]["name"], "role": "ground truth"}
    data, kwargs, kind = semantic_layer_data((truth + 1).astype("uint8"), preset_classes("potsdam6"), gt_meta,
                                               name="ground truth")
    kwargs["visible"] = False
    return [*layers, (data, kwargs, kind)]

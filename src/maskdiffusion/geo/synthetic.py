"""Small synthetic Potsdam-like tiles with exact labels, for tests, demos and benchmarks.

No Potsdam data can ship with the package, so this draws a vaguely urban RGBIR scene (a
road grid with cars, roof rectangles, lawns, tree crowns, some clutter) together with its
label map, and writes it the way ISPRS distributes Potsdam.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from scipy import ndimage

from ..errors import BadInputError
from .atomic import atomic_output
from .isprs import boundary_mask, encode_isprs_labels

__all__ = ["make_potsdam_like_tile", "write_potsdam_like", "POTSDAM_PIXEL_SIZE", "POTSDAM_ORIGIN"]

#: Ground sampling distance of the Potsdam tiles, in metres.
POTSDAM_PIXEL_SIZE = 0.05
#: Map coordinates (EPSG:32633) of the upper-left corner of the synthetic tiles.
POTSDAM_ORIGIN = (366000.0, 5808000.0)

IMPERVIOUS, BUILDING, LOW_VEGETATION, TREE, CAR, CLUTTER = range(6)

# Mean R, G, B, IR of each class (potsdam6 order); vegetation is bright in the infrared.
_MEAN = np.array([
    [135, 135, 130, 90],
    [185, 90, 60, 110],
    [125, 170, 95, 200],
    [45, 95, 45, 170],
    [230, 230, 225, 120],
    [150, 115, 85, 100],
], dtype=np.float32)
_NOISE = np.array([10, 14, 12, 14, 8, 20], dtype=np.float32)


def _rect(labels, value, r0, c0, h, w):
    labels[max(r0, 0):r0 + h, max(c0, 0):c0 + w] = value


def _road_lines(rng, size, width):
    n = max(1, size // 256)
    cuts = np.linspace(0, size, n + 2)[1:-1]
    return [int(c + rng.uniform(-0.2, 0.2) * size / (n + 1)) - width // 2 for c in cuts]


def _draw_labels(rng, size) -> np.ndarray:
    labels = np.full((size, size), LOW_VEGETATION, dtype=np.int16)
    road = max(8, size // 14)
    rows, cols = _road_lines(rng, size, road), _road_lines(rng, size, road)
    for r in rows:
        _rect(labels, IMPERVIOUS, r, 0, road, size)
    for c in cols:
        _rect(labels, IMPERVIOUS, 0, c, size, road)
    edges_r = [0, *[r + road for r in rows]], [*rows, size]
    edges_c = [0, *[c + road for c in cols]], [*cols, size]
    for r0, r1 in zip(*edges_r):
        for c0, c1 in zip(*edges_c):
            h, w = r1 - r0, c1 - c0
            if h < 24 or w < 24:
                continue
            for _ in range(rng.integers(1, 4)):
                bh, bw = (int(rng.uniform(0.25, 0.5) * h), int(rng.uniform(0.25, 0.5) * w))
                br, bc = r0 + rng.integers(4, max(5, h - bh - 3)), c0 + rng.integers(4, max(5, w - bw - 3))
                _rect(labels, BUILDING, br, bc, bh, bw)

    n_trees = int(rng.integers(8, 14) * (size / 512) ** 2) + 3
    for _ in range(20 * n_trees):
        cy, cx = (int(v) for v in rng.integers(0, size, 2))
        if labels[cy, cx] != LOW_VEGETATION:
            continue
        radius = int(rng.uniform(0.02, 0.05) * size) + 3
        rows_, cols_ = slice(max(cy - radius, 0), cy + radius + 1), slice(max(cx - radius, 0), cx + radius + 1)
        yy, xx = np.ogrid[rows_, cols_]
        window = labels[rows_, cols_]
        yy, xx = yy[: window.shape[0]], xx[:, : window.shape[1]]
        window[((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2) & (window == LOW_VEGETATION)] = TREE
        n_trees -= 1
        if not n_trees:
            break
    on_road = labels == IMPERVIOUS

    car_l, car_w = max(8, size // 25), max(5, size // 55)
    for r in rows:
        for _ in range(rng.integers(2, 5)):
            _rect(labels, CAR, r + road // 4 + int(rng.integers(0, 2)) * road // 2 - car_w // 2,
                  int(rng.integers(0, size - car_l)), car_w, car_l)
    for c in cols:
        for _ in range(rng.integers(2, 5)):
            _rect(labels, CAR, int(rng.integers(0, size - car_l)),
                  c + road // 4 + int(rng.integers(0, 2)) * road // 2 - car_w // 2, car_l, car_w)
    labels[(labels == CAR) & ~on_road] = IMPERVIOUS

    for _ in range(int(rng.integers(3, 7) * (size / 512) ** 2) + 1):
        h, w = (max(8, int(v * size)) for v in rng.uniform(0.02, 0.05, 2))
        r, c = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
        patch = labels[r:r + h, c:c + w]
        patch[patch == LOW_VEGETATION] = CLUTTER
    return labels


def make_potsdam_like_tile(size: int = 512, seed: int = 0, boundary: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Draw a Potsdam-like RGBIR tile and its labels, the same for the same ``seed``.

    Within ``boundary`` pixels of a class edge the image mixes the neighbouring classes, as
    an orthophoto does; that band is what the ``*_noBoundary`` labels leave out.

    Returns
    -------
    image : (size, size, 4) uint8, bands R, G, B, IR.
    labels : (size, size) int16 class index in ``potsdam6`` order (impervious surfaces,
        building, low vegetation, tree, car, clutter).
    """
    if size < 64:
        raise BadInputError(f"tile size must be at least 64 pixels, got {size}")
    rng = np.random.default_rng(seed)
    labels = _draw_labels(rng, size)
    image = _MEAN[labels] + rng.standard_normal((size, size, 4), dtype=np.float32) * _NOISE[labels][..., None]
    light = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), size / 32)
    image *= (1.0 + 0.06 * light / light.std())[..., None]
    if boundary > 0:
        blurred = ndimage.uniform_filter(image, size=(boundary + 1, boundary + 1, 1))
        edge = boundary_mask(labels, boundary)
        image[edge] = blurred[edge]
    return np.clip(image, 0, 255).astype(np.uint8), labels


def _write_tiff(path: Path, array: np.ndarray, **options) -> Path:
    import rasterio

    bands = np.moveaxis(array, -1, 0)
    with atomic_output(path) as tmp, warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", driver="GTiff", width=array.shape[1], height=array.shape[0],
                           count=bands.shape[0], dtype="uint8", compress="deflate", **options) as dst:
            dst.write(bands)
    return path


def _write_world_file(path: Path, pixel_size: float, origin: tuple[float, float]) -> Path:
    x0, y0 = origin
    lines = [pixel_size, 0.0, 0.0, -pixel_size, x0 + pixel_size / 2, y0 - pixel_size / 2]
    with atomic_output(path) as tmp:
        tmp.write_text("".join(f"{v:.10f}\n" for v in lines), encoding="ascii")
    return path


def write_potsdam_like(folder, name: str = "top_potsdam_2_10", size: int = 512, seed: int = 0,
                       boundary: int = 3) -> dict[str, Path]:
    """Write a synthetic tile as ISPRS ships Potsdam: image, world file, RGB-coded labels.

    Files: ``{name}_RGBIR.tif`` (4-band uint8, no embedded georeference), ``{name}_RGBIR.tfw``
    (0.05 m pixels, upper-left corner at :data:`POTSDAM_ORIGIN` in EPSG:32633, which the
    world file does not state), ``{id}_label.tif`` and ``{id}_label_noBoundary.tif`` with
    ``id`` = ``name`` without ``top_`` (black = ignore along class edges, ``boundary`` px).

    Returns the paths under the keys ``image``, ``world_file``, ``label``, ``label_no_boundary``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = make_potsdam_like_tile(size, seed, boundary)
    label_stem = name.replace("top_", "", 1)
    no_boundary = np.where(boundary_mask(labels, boundary), -1, labels)
    paths = {
        "image": _write_tiff(folder / f"{name}_RGBIR.tif", image, photometric="MINISBLACK"),
        "world_file": _write_world_file(folder / f"{name}_RGBIR.tfw", POTSDAM_PIXEL_SIZE, POTSDAM_ORIGIN),
        "label": _write_tiff(folder / f"{label_stem}_label.tif", encode_isprs_labels(labels), photometric="RGB"),
        "label_no_boundary": _write_tiff(folder / f"{label_stem}_label_noBoundary.tif",
                                         encode_isprs_labels(no_boundary), photometric="RGB"),
    }
    return paths


"""Run parameters and their defaults: the one place where defaults live.

``SegmentParams()`` is the ``paper`` preset of SPEC §2 plus the tiling defaults of §3.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from ..errors import BadInputError

__all__ = ["SegmentParams", "ParamsError", "DEFAULT_MODEL", "CROSS_ATTENTION_LAYERS", "FEATURE_LAYERS"]

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"

#: UNet blocks whose cross-attention (``attn2``) maps are captured (SPEC §2.3).
CROSS_ATTENTION_LAYERS = ("down_blocks.2", "mid_block", "up_blocks.1")
#: Modules whose *input* is captured as features: 1920 ch at S/32 and 960 ch at S/16 for SD 1.x.
FEATURE_LAYERS = ("up_blocks.1.resnets.2", "up_blocks.2.resnets.2")


class ParamsError(BadInputError):
    """Parameters that cannot run (tile size not a multiple of 64, negative overlap, ...)."""


@dataclass(frozen=True)
class SegmentParams:
    """How to segment. Defaults reproduce the paper on one tile and tile larger images.

    tile_size, overlap: in image pixels (after ``scale``); the model sees each tile at that size.
    scale: resample the whole image by this factor first; results come back on the input grid.
    prototypes: ``"tile"`` (the paper: class prototypes per tile) or ``"image"`` (shared over all
        tiles, so a class means the same thing everywhere).
    attention: ``"exp"`` (the paper's unnormalised exponent) or ``"softmax"``.
    timestep, noise, seed: UNet timestep; add the scheduler's noise for that timestep with a seed.
    cross_attention_layers, feature_layers: module names in the UNet (see the constants).
    unsupervised: K clusters instead of classes (k-means on the features); ``clustering`` picks
        ``"kmeans"`` or ``"spectral"`` (with ``spatial_weight`` on pixel position).
    bands: band indices (0-based) taken as R, G, B from a multi-band image.
    return_scores: keep the per-class score maps (K×H×W float32) in the result.
    """

    tile_size: int = 512
    overlap: int = 64
    scale: float = 1.0
    prototypes: str = "tile"
    attention: str = "exp"
    timestep: int = 0
    noise: bool = False
    seed: int = 0
    cross_attention_layers: tuple[str, ...] = CROSS_ATTENTION_LAYERS
    feature_layers: tuple[str, ...] = FEATURE_LAYERS
    unsupervised: int | None = None
    clustering: str = "kmeans"
    spatial_weight: float = 0.0
    bands: tuple[int, ...] | None = None
    return_scores: bool = False

    def __post_init__(self):
        if self.tile_size < 64 or self.tile_size % 64:
            raise ParamsError(f"tile size must be a positive multiple of 64 pixels, got {self.tile_size}")
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ParamsError(f"overlap must be between 0 and half the tile size ({self.tile_size // 2}), got {self.overlap}")
        if not 0.01 <= self.scale <= 16:
            raise ParamsError(f"scale must be between 0.01 and 16, got {self.scale}")
        if self.prototypes not in ("tile", "image"):
            raise ParamsError(f"prototypes must be 'tile' or 'image', got {self.prototypes!r}")
        if self.attention not in ("exp", "softmax"):
            raise ParamsError(f"attention must be 'exp' or 'softmax', got {self.attention!r}")
        if not 0 <= self.timestep < 1000:
            raise ParamsError(f"timestep must be in 0..999, got {self.timestep}")
        if self.unsupervised is not None and not 2 <= self.unsupervised <= 256:
            raise ParamsError(f"unsupervised K must be between 2 and 256, got {self.unsupervised}")
        if self.clustering not in ("kmeans", "spectral"):
            raise ParamsError(f"clustering must be 'kmeans' or 'spectral', got {self.clustering!r}")
        if len(self.feature_layers) != 2:
            raise ParamsError("feature_layers names exactly two modules (coarse, fine)")
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) not in (1, 3) or min(bands) < 0:
                raise ParamsError(f"bands must be 1 or 3 band indices (0-based), got {self.bands!r}")
            object.__setattr__(self, "bands", bands)
        for name in ("cross_attention_layers", "feature_layers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def stride(self) -> int:
        return self.tile_size - self.overlap

    def replace(self, **changes) -> "SegmentParams":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SegmentParams":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

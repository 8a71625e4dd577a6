"""Run parameters and their defaults: the one place where defaults live.

``SegmentParams()`` is the ``paper`` preset (``docs/algorithm.md`` §2) plus the tiling
defaults of §3. The command line and the napari dock build their options from the fields'
metadata (:func:`face_fields`), so a new parameter appears in both by being declared here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

from ..errors import BadInputError

__all__ = ["SegmentParams", "ParamsError", "DEFAULT_MODEL", "CROSS_ATTENTION_LAYERS", "FEATURE_LAYERS", "BACKENDS",
           "face_fields"]

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"

#: UNet blocks whose cross-attention (``attn2``) maps are captured (``docs/algorithm.md`` §2.3).
CROSS_ATTENTION_LAYERS = ("down_blocks.2", "mid_block", "up_blocks.1")
#: Modules whose *input* is captured as features: 1920 ch at S/32 and 960 ch at S/16 for SD 1.x.
FEATURE_LAYERS = ("up_blocks.1.resnets.2", "up_blocks.2.resnets.2")
#: Who runs the per-tile forward (``docs/algorithm.md`` §5): OpenVINO where it is installed and
#: the device is a CPU, else PyTorch; the two agree to fp32 rounding.
BACKENDS = ("auto", "torch", "openvino")


class ParamsError(BadInputError):
    """Parameters that cannot run (tile size not a multiple of 64, negative overlap, ...)."""


def _option(default, help: str, **face) -> object:
    """A field with what the faces need to offer it: ``help``, and for the command line and
    the napari dock ``cli``/``widget`` (offered there), ``choices`` (``or_path``: or a path,
    on the command line), ``min``/``max``/``step``, ``suffix``, ``metavar``, ``off`` (the
    widget's text for ``None``)."""
    return field(default=default, metadata={"help": help, "cli": True, **face})


@dataclass(frozen=True)
class SegmentParams:
    """How to segment. Defaults reproduce the paper on one tile and tile larger images.

    Every field carries its help text and how the command line and the napari dock offer it
    (:func:`dataclasses.fields` metadata), so the faces generate their options from here.
    The algorithm behind the fields is ``docs/algorithm.md``.

    Examples
    --------
    >>> params = SegmentParams(tile_size=256)
    >>> params.stride
    192
    >>> SegmentParams.from_dict(params.to_dict()) == params
    True
    """

    tile_size: int = _option(512, "tile side in image pixels, a multiple of 64; the model sees the tile at that size",
                             widget=True, min=64, max=4096, step=64, suffix=" px", metavar="PX")
    overlap: int = _option(64, "overlap between neighbouring tiles in pixels, blended with a smooth window",
                           widget=True, min=0, max=2048, step=16, suffix=" px", metavar="PX")
    scale: float = _option(1.0, "resample the image by this factor first (0.5: 5 cm Potsdam as 10 cm); results "
                                "come back on the input grid", widget=True, min=0.05, max=8.0, step=0.25)
    prototypes: str = _option("tile", "class prototypes per tile (the paper) or shared over the whole image",
                              widget=True, choices=("tile", "image"))
    encoder: str = _option("vae", "image encoder: the paper's Stable Diffusion VAE, or TAESD (9x less work, "
                                  "approximate: 'taesd' is the hub's madebyollin/taesd; or a TAESD folder or file)",
                           widget=True, choices=("vae", "taesd"), or_path=True, metavar="vae|taesd|PATH")
    backend: str = _option("auto", "what runs the model on a CPU: openvino (faster, exact to fp32; needs the "
                                   "[openvino] extra) or torch; auto takes openvino where it is installed and the "
                                   "device is a CPU", widget=True, choices=BACKENDS)
    attention: str = _option("exp", "attention maps: the paper's unnormalised exp(q.k) or the softmax",
                             choices=("exp", "softmax"))
    timestep: int = _option(0, "UNet timestep", metavar="T")
    noise: bool = _option(False, "add the scheduler's noise for the timestep (seeded)")
    seed: int = _option(0, "seed of the noise and of the clustering", metavar="N")
    cross_attention_layers: tuple[str, ...] = field(default=CROSS_ATTENTION_LAYERS,
                                                    metadata={"help": "UNet blocks whose cross-attention is captured"})
    feature_layers: tuple[str, ...] = field(default=FEATURE_LAYERS,
                                            metadata={"help": "the two modules whose input is the feature map"})
    unsupervised: int | None = _option(None, "K clusters of the features instead of classes (named after the "
                                             "classes when given)", widget=True, min=0, max=256, off="off",
                                       metavar="K")
    clustering: str = _option("kmeans", "clustering of the unsupervised mode", choices=("kmeans", "spectral"))
    spatial_weight: float = _option(0.0, "spectral clustering: weight of the pixel position")
    bands: tuple[int, ...] | None = _option(None, "0-based bands used as R,G,B, e.g. 3,0,1 for IRRG from RGBIR",
                                            metavar="B,B,B")
    return_scores: bool = field(default=False, metadata={"help": "keep the per-class score maps in the result"})
    return_confidence: bool = field(default=True, metadata={"help": "compute the confidence map of the result"})

    def __post_init__(self):
        if self.tile_size < 64 or self.tile_size % 64:
            raise ParamsError(f"tile size must be a positive multiple of 64 pixels, got {self.tile_size}")
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ParamsError(f"overlap must be between 0 and half the tile size ({self.tile_size // 2}), "
                              f"got {self.overlap}")
        if not 0.01 <= self.scale <= 16:
            raise ParamsError(f"scale must be between 0.01 and 16, got {self.scale}")
        if self.prototypes not in ("tile", "image"):
            raise ParamsError(f"prototypes must be 'tile' or 'image', got {self.prototypes!r}")
        if not isinstance(self.encoder, str) or not self.encoder.strip():
            raise ParamsError(f"encoder must be vae, taesd or a TAESD folder or file, got {self.encoder!r}")
        if self.backend not in BACKENDS:
            raise ParamsError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.attention not in ("exp", "softmax"):
            raise ParamsError(f"attention must be 'exp' or 'softmax', got {self.attention!r}")
        if not 0 <= self.timestep < 1000:
            raise ParamsError(f"timestep must be in 0..999, got {self.timestep}")
        if self.unsupervised is not None and not 2 <= self.unsupervised <= 256:
            raise ParamsError(f"unsupervised K must be between 2 and 256, got {self.unsupervised}")
        if self.clustering not in ("kmeans", "spectral"):
            raise ParamsError(f"clustering must be 'kmeans' or 'spectral', got {self.clustering!r}")
        if not 0 <= self.seed < 2**32:
            raise ParamsError(f"seed must be between 0 and {2**32 - 1}, got {self.seed}")
        if not (math.isfinite(self.spatial_weight) and self.spatial_weight >= 0):
            raise ParamsError(f"spatial weight must be a number of 0 or more, got {self.spatial_weight}")
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

    def replace(self, **changes) -> SegmentParams:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentParams:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


def face_fields(face: str):
    """The fields a face offers, in declaration order: ``"cli"`` or ``"widget"``."""
    return [f for f in fields(SegmentParams) if f.metadata.get(face)]

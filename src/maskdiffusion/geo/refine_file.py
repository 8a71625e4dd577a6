"""What refinement needs of a run, saved beside its labels: ``OUT.refine.npz``.

``maskdiffusion batch --save-refine`` and a dataset's drafts write one beside each label
raster, so a draft made on a cluster or a GPU is refined on a laptop with no model
(:class:`~maskdiffusion.core.refine.RefineState`, ``docs/algorithm.md`` §4). The file is a
compressed NumPy archive: ``features`` (D, gh, gw) float16, ``attention`` (K, gh, gw),
``base`` (the draft's grid scores), ``basis`` (C, D) float16 when the features are reduced,
``prior`` and ``prior_share`` when a class memory shaped the draft, and ``meta``, a JSON text
(format, classes with ``from_text``, shape, stride, reduction, and the caller's metadata).
Written atomically and read back before it replaces anything.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from ..core.classes import ClassSpec
from ..core.refine import RefineState
from ..errors import BadInputError, OutputError
from .atomic import atomic_output, to_jsonable

__all__ = ["FORMAT", "RefineFileError", "read_refine_state", "refine_path", "write_refine_state"]

FORMAT = "maskdiffusion-refine"
_ARRAYS = ("features", "attention", "base", "basis", "prior", "prior_share")


class RefineFileError(BadInputError):
    """A refinement file that cannot be read, with the reason in one sentence."""


def refine_path(out_path) -> Path:
    """The refinement file of a label raster: ``seg.tif`` -> ``seg.refine.npz``."""
    return Path(out_path).with_suffix(".refine.npz")


def write_refine_state(path, state: RefineState, metadata: dict | None = None) -> Path:
    """Write ``state`` (and ``metadata``) to ``path`` atomically, compressed; checked by reading
    its arrays' shapes back. Joins an enclosing :class:`~maskdiffusion.geo.atomic.StagedOutputs`."""
    path = Path(path)
    arrays = {"features": state.features, "attention": state.attention.astype(np.float32, copy=False),
              "base": state.base, "basis": None if state.basis is None else state.basis.astype(np.float16),
              "prior": state.prior, "prior_share": state.prior_share}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    meta = {"format": FORMAT, "version": 1,
            "classes": [dict(c.to_dict(), from_text=t) for c, t in zip(state.classes, state.from_text)],
            "shape": list(state.shape), "stride": state.stride, "reduction": state.reduction,
            "features_id": state.features_id, "metadata": metadata or {}}

    def reads_back(tmp: Path) -> None:
        try:
            with np.load(tmp, allow_pickle=False) as z:
                same = all(z[k].shape == v.shape for k, v in arrays.items())
        except (OSError, ValueError, KeyError):
            same = False
        if not same:
            raise OutputError(f"cannot write {path}: the written file does not read back as written; "
                              "nothing was written or replaced")

    with atomic_output(path, check=reads_back) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, meta=np.array(json.dumps(to_jsonable(meta))), **arrays)
    return path


def read_refine_state(path) -> tuple[RefineState, dict]:
    """The :class:`RefineState` stored at ``path`` and the metadata saved with it.

    Raises :class:`RefineFileError` for a missing, damaged or foreign file.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in _ARRAYS if k in z.files}
    except FileNotFoundError:
        raise RefineFileError(f"{path}: no such file") from None
    except (OSError, ValueError, KeyError, EOFError) as e:
        raise RefineFileError(f"{path}: not a refinement file or damaged ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RefineFileError(f"{path}: not a MaskDiffusion refinement file")
    try:
        classes = tuple(ClassSpec.from_dict(c) for c in meta["classes"])
        basis = arrays.get("basis")
        state = RefineState(arrays["features"], arrays["attention"], classes, tuple(meta["shape"]),
                            float(meta["stride"]), tuple(bool(c.get("from_text", True)) for c in meta["classes"]),
                            dict(meta.get("reduction") or {}), str(meta.get("features_id") or uuid.uuid4().hex[:12]),
                            arrays.get("base"), None if basis is None else basis.astype(np.float32),
                            arrays.get("prior"), arrays.get("prior_share"))
    except (KeyError, TypeError, ValueError) as e:
        raise RefineFileError(f"{path} is inconsistent: {e}") from None
    return state, dict(meta.get("metadata") or {})

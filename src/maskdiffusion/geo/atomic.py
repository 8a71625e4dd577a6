"""Write files so that readers see either the old file or the complete new one, never a part."""

from __future__ import annotations

import json
import math
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import BadInputError, OutputError

__all__ = ["atomic_output", "to_jsonable", "write_json"]


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Give a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    The temporary name keeps the suffix of ``path`` (so GDAL picks the same driver) and
    lives in the same folder (so :func:`os.replace` is atomic). On any exception the
    temporary file is deleted and an existing ``path`` is left untouched.

    Examples
    --------
    >>> with atomic_output("seg.tif") as tmp:          # doctest: +SKIP
    ...     with rasterio.open(tmp, "w", **profile) as dst:
    ...         dst.write(labels, 1)
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInputError(f"cannot write {path}: folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"cannot write {path}: nothing was written")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def to_jsonable(obj: Any) -> Any:
    """Turn numpy values, paths, tuples and NaN/inf (as ``None``) into plain JSON types."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strictly valid JSON (NaN becomes ``null``), atomically."""
    path = Path(path)
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False)
    with atomic_output(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")
    return path

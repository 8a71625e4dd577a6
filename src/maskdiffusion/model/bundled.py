"""The SD 1.x and 2.x configs bundled with the package, so single checkpoint files load offline."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["BUNDLED_CONFIGS", "bundled_scheduler_config"]

BUNDLED_CONFIGS = Path(__file__).parent / "configs"


def bundled_scheduler_config(family: str) -> dict:
    """The scheduler config bundled for ``"sd1"`` or ``"sd2"``."""
    return json.loads((BUNDLED_CONFIGS / family / "scheduler" / "scheduler_config.json").read_text())

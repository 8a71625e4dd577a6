"""The annotator's remembered choices (model source, device, precision, classes) between sessions.

A small JSON file in the user's config folder (``platformdirs``), or in the folder named by
``NAPARI_MASKDIFFUSION_CONFIG_DIR``. A missing or broken file gives the defaults, never an error.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..core.params import DEFAULT_MODEL

__all__ = ["WidgetSettings", "settings_path", "load_settings", "save_settings"]

_ENV = "NAPARI_MASKDIFFUSION_CONFIG_DIR"
_MAX_RECENT = 8


@dataclass
class WidgetSettings:
    """What the dock remembers; ``recent_sources`` is newest first, ``classes`` the last class
    line run (comma-separated, as the command line takes it)."""

    model_source: str = DEFAULT_MODEL
    device: str = "auto"
    precision: str = "auto"
    recent_sources: list[str] = field(default_factory=list)
    classes: str = ""

    def remember_source(self, source: str) -> None:
        self.model_source = source
        self.recent_sources = [source, *(s for s in self.recent_sources if s != source)][:_MAX_RECENT]


def settings_path() -> Path:
    folder = os.environ.get(_ENV)
    if not folder:
        from platformdirs import user_config_dir

        folder = user_config_dir("napari-maskdiffusion", appauthor=False)
    return Path(folder) / "settings.json"


def load_settings() -> WidgetSettings:
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
        known = {f.name for f in fields(WidgetSettings)}
        return WidgetSettings(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return WidgetSettings()


def save_settings(settings: WidgetSettings) -> None:
    """Write the settings; a read-only config folder only loses the memory, not the session."""
    from ..geo.atomic import write_json

    try:
        settings_path().parent.mkdir(parents=True, exist_ok=True)
        write_json(settings_path(), asdict(settings))
    except OSError:  # OutputError is one
        pass

"""Where vlalign keeps its caches by default: `$XDG_CACHE_HOME/vlalign/<kind>` (~/.cache/vlalign)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The default cache folder for `kind` (e.g. "models", "reference-logps")."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "vlalign" / kind

"""Where lmprog keeps what it builds and converts (engines, models, constraint indexes)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where lmprog keeps built engines and models: $LMPROG_CACHE_DIR or ~/.cache/lmprog."""
    return Path(os.environ.get("LMPROG_CACHE_DIR") or Path.home() / ".cache" / "lmprog")

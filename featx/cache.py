"""Where featx keeps what it remembers between runs (lean-graph checks, preprocessing configs).
No heavy import here: the CLI reads it before torch is loaded."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$FEATX_CACHE_DIR, else $XDG_CACHE_HOME/featx, else ~/.cache/featx."""
    if os.environ.get("FEATX_CACHE_DIR"):
        return Path(os.environ["FEATX_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "featx"

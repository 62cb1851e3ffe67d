"""Where featx keeps what it remembers between runs (lean-graph checks, preprocessing configs).
No heavy import here: the CLI reads it before torch is loaded."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$FEATX_CACHE_DIR, else $XDG_CACHE_HOME/featx, else ~/.cache/featx."""
    if os.environ.get("FEATX_CACHE_DIR"):
        return Path(os.environ["FEATX_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "featx"


def recall(file_name: str, key: str):
    """The record kept under `key` in the cache file `file_name`, or None (no cache yet, or a
    damaged one: the caller does the work again)."""
    try:
        return json.loads((cache_dir() / file_name).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def remember(file_name: str, key: str, record, *, kept: int) -> None:
    """Keep `record` (JSON) under `key` in the cache file `file_name`, with at most the `kept` newest
    entries. A cache that cannot be written only costs the next run what it would have saved."""
    path = cache_dir() / file_name
    try:
        try:
            records = json.loads(path.read_text())
            records = records if isinstance(records, dict) else {}
        except (OSError, ValueError):
            records = {}
        if records.get(key) == record:
            return
        records.pop(key, None)
        records[key] = record
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.part")
        partial.write_text(json.dumps(dict(list(records.items())[-kept:])))
        os.replace(partial, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as exc:
        log.debug("cannot write the cache file %s: %s", path, exc)

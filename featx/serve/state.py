"""What one server holds (options, token, metrics, decode threads, the loaded registry, jobs), and
the checks made before it binds."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featx.errors import InputError
from featx.options import ServeOptions
from featx.serve.metrics import Metrics
from featx.serve.registry import Registry


@dataclass
class ServerState:
    options: ServeOptions
    token: str | None
    metrics: Metrics
    decode_pool: ThreadPoolExecutor
    registry: Registry | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    jobs: Any = None
    load_error: str | None = None
    retiring: set = field(default_factory=set)
    active: int = 0  # HTTP requests being handled (counted on the event loop)


def read_token(token_file: str | None) -> str | None:
    if token_file is None:
        return None
    path = Path(token_file)
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise InputError(f"--token-file '{token_file}' cannot be read ({exc}); give a file holding the token") from None
    if len(token) < 16:
        raise InputError(f"the token in --token-file '{token_file}' has {len(token)} characters; use at least 16, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > token.txt`")
    return token


def check_binding(options: ServeOptions) -> None:
    """Refuse to listen beyond this machine without a token."""
    if options.token_file is None and options.host not in ("127.0.0.1", "localhost", "::1"):
        raise InputError(f"--host {options.host} would expose the service beyond this machine without "
                         "authentication; give --token-file FILE (clients send `Authorization: Bearer TOKEN`), "
                         "or bind 127.0.0.1")


def featx_version() -> str:
    from featx._version import __version__

    return __version__

"""Run the service with uvicorn (what `featx serve` calls)."""

from __future__ import annotations

import logging
from pathlib import Path

from featx.errors import InputError
from featx.options import ServeOptions

log = logging.getLogger(__name__)

KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this many seconds
MAX_HEADER_BYTES = 64 * 1024  # request line and headers; larger: 400
# connections taken from the kernel's queue per wake-up: the loop makes them transports only after
# the whole batch, so a bigger batch could pass the descriptor limit before the cap closes any
ACCEPT_BACKLOG = 128


def named_folders(items: list[str] | None, option: str) -> dict[str, str]:
    """`--model ants=runs/model` (repeatable) -> {"ants": "runs/model"}; a bare folder is named after itself."""

    named: dict[str, str] = {}
    for item in items or []:
        name, sep, folder = item.partition("=")
        if not sep:
            name, folder = Path(item).name, item
        if not name or not folder:
            raise InputError(f"{option} '{item}' is not NAME=DIR (e.g. {option} ants=runs/model)")
        if name in named:
            raise InputError(f"{option} name '{name}' is given twice; give each artifact its own name")
        if not Path(folder).is_dir():
            raise InputError(f"{option} {name}={folder}: no such folder")
        named[name] = folder
    return named


def serve(options: ServeOptions, *, log_level: str = "info") -> None:
    """Load the artifacts, bind (safely) and serve until interrupted; SIGHUP reloads."""
    import uvicorn

    from featx.serve.app import create_app
    from featx.serve.state import check_binding

    check_binding(options)
    if not (options.models or options.indexes or options.stores or options.projections or options.anomalies):
        raise InputError("nothing to serve: give --model NAME=MODEL_DIR, --index NAME=INDEX_DIR, "
                         "--store NAME=STORE_DIR, --projection NAME=PROJECTION_DIR or --anomaly NAME=ANOMALY_DIR "
                         "(each repeatable)")
    app = create_app(options, handle_sighup=True)
    uvicorn.Server(uvicorn_config(app, options, log_level=log_level)).run()


def uvicorn_config(app, options: ServeOptions, *, log_level: str = "info", port: int | None = None):
    """uvicorn's settings for `app`: featx's connection handling (a deadline to send each request, a
    cap on open connections: featx.serve.connections), short keep-alive, no server header."""
    import uvicorn

    from featx.serve.connections import guarded_protocol

    return uvicorn.Config(app, host=options.host, port=options.port if port is None else port, log_level=log_level,
                          server_header=False, timeout_graceful_shutdown=int(options.timeout_s) + 1,
                          http=guarded_protocol(options.max_connections, options.read_timeout_s, ACCEPT_BACKLOG),
                          backlog=ACCEPT_BACKLOG,
                          timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEADER_BYTES)

"""Run the service with uvicorn (what `featx serve` calls)."""

from __future__ import annotations

import logging
from pathlib import Path

from featx.errors import InputError
from featx.options import ServeOptions

log = logging.getLogger(__name__)


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
    uvicorn.run(app, host=options.host, port=options.port, log_level=log_level, server_header=False,
                timeout_graceful_shutdown=int(options.timeout_s) + 1)

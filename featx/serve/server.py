"""Run the service with uvicorn (what `featx serve` calls)."""

from __future__ import annotations

import logging

from pathlib import Path

from featx.errors import InputError
from featx.options import ServeOptions

log = logging.getLogger(__name__)


def named_folders(items: list[str] | None, option: str) -> dict[str, str]:
    """`--model ants=runs/model` (repeatable) -> {"ants": "runs/model"}; a bare folder is named after itself."""
    from pathlib import Path

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


def restart_with_one_malloc_arena() -> None:
    """Replace this `featx serve` process by the same command with `MALLOC_ARENA_MAX=1` (same PID).

    The forward pass runs in a worker thread; with glibc's per-thread arenas its large activation
    buffers are handed back to the OS and faulted in again on every pass. Measured here
    (efficientnet_lite0, one image, 40 interleaved runs, one core): 51-60 ms in a worker thread
    against 41-47 ms in the main thread; with one arena 44-48 ms in both. Served end to end
    (`benchmarks/serve_load.py --paired 40`, two alternating pairs): the per-request ratio to an
    offline decode + forward went from 1.52 and 1.43 to 1.26 and 1.34. glibc reads the variable
    only at process start (a `mallopt` later left both threads slow), hence the restart. Nothing
    happens when the user set `MALLOC_ARENA_MAX`, off Linux, or when featx is not the program
    (the Python API, tests)."""
    import os
    import sys

    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    if Path(sys.argv[0]).name not in ("featx", "cli.py") or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "MALLOC_ARENA_MAX": "1"})


def serve(options: ServeOptions, *, log_level: str = "info", restart_for_speed: bool = False) -> None:
    """Load the artifacts, bind (safely) and serve until interrupted; SIGHUP reloads.
    `restart_for_speed` (the CLI): see `restart_with_one_malloc_arena`."""
    import uvicorn

    from featx.serve.app import check_binding, create_app

    check_binding(options)
    if not (options.models or options.indexes or options.stores or options.projections):
        raise InputError("nothing to serve: give --model NAME=MODEL_DIR, --index NAME=INDEX_DIR, "
                         "--store NAME=STORE_DIR or --projection NAME=PROJECTION_DIR (each repeatable)")
    if restart_for_speed:
        restart_with_one_malloc_arena()  # returns only when no restart is needed
    app = create_app(options, handle_sighup=True)
    uvicorn.run(app, host=options.host, port=options.port, log_level=log_level, server_header=False,
                timeout_graceful_shutdown=int(options.timeout_s) + 1)

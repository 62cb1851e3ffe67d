"""`featx serve`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from featx.cli.common import command, option, validated
from featx.options import Device, ServeOptions

FOLDER_FLAGS = {"models": "--model", "indexes": "--index", "stores": "--store", "projections": "--projection",
                "anomalies": "--anomaly"}


# --- service -----------------------------------------------------------------------------------

@command("serve")
def serve_cmd(
    models: Optional[List[str]] = option(ServeOptions, "models", "--model", "-m"),
    indexes: Optional[List[str]] = option(ServeOptions, "indexes", "--index", "-i"),
    stores: Optional[List[str]] = option(ServeOptions, "stores", "--store", "-s"),
    projections: Optional[List[str]] = option(ServeOptions, "projections", "--projection", "-p"),
    anomalies: Optional[List[str]] = option(ServeOptions, "anomalies", "--anomaly"),
    data_root: Optional[Path] = option(ServeOptions, "data_root"),
    state_dir: Optional[Path] = option(ServeOptions, "state_dir"),
    host: str = option(ServeOptions, "host"),
    port: int = option(ServeOptions, "port"),
    token_file: Optional[Path] = option(ServeOptions, "token_file"),
    device: Device = option(ServeOptions, "device"),
    max_batch: int = option(ServeOptions, "max_batch"),
    max_wait_ms: float = option(ServeOptions, "max_wait_ms"),
    max_queue: int = option(ServeOptions, "max_queue"),
    decode_workers: int = option(ServeOptions, "decode_workers"),
    max_body_mb: float = option(ServeOptions, "max_body_mb"),
    max_files: int = option(ServeOptions, "max_files"),
    max_pixels: int = option(ServeOptions, "max_pixels"),
    timeout_s: float = option(ServeOptions, "timeout_s", "--timeout"),
    cors_origins: Optional[List[str]] = option(ServeOptions, "cors_origins", "--cors-origin"),
    weights_root: Optional[Path] = option(ServeOptions, "weights_root"),
    job_memory_gb: Optional[float] = option(ServeOptions, "job_memory_gb", "--job-memory"),
    job_max_image_size: int = option(ServeOptions, "job_max_image_size"),
    job_max_batch: int = option(ServeOptions, "job_max_batch"),
    job_max_workers: int = option(ServeOptions, "job_max_workers"),
    max_connections: int = option(ServeOptions, "max_connections"),
    read_timeout_s: float = option(ServeOptions, "read_timeout_s", "--read-timeout"),
):
    """Serve models, indexes and stores over HTTP, with a web page at / (SIGHUP reloads them)."""
    from featx.runtime import restart_with_one_malloc_arena
    from featx.serve.server import named_folders, serve

    given = dict(locals())  # the parameters, named as ServeOptions' fields
    for field, flag in FOLDER_FLAGS.items():
        given[field] = named_folders(given[field], flag)
    options = validated(ServeOptions, given, flags={**FOLDER_FLAGS, "timeout_s": "--timeout",
                                                    "cors_origins": "--cors-origin", "job_memory_gb": "--job-memory",
                                                    "read_timeout_s": "--read-timeout"})
    restart_with_one_malloc_arena()  # returns only when no restart is needed (featx.runtime says why)
    serve(options)

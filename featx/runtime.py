"""What this process may use, and the process-wide settings featx's entry points make.

Library code only reads (`usable_cores`) or changes a setting for a block and puts it back
(`torch_threads`). The other settings change the whole process for good, so only the entry points
make them: the CLI (`featx.cli`), the service (`featx.cli.serve` before `featx.serve` starts) and a
Ray actor's constructor (the entry point of that process). Importing any featx module changes
nothing; tests prove it."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

# libgomp (torch's OpenMP on Linux) lets a waiting thread spin up to 300,000 times before it sleeps.
# Measured on a busy 2-core machine: fed from memory (views decoded ahead by the head start's
# processes), the forward pass spent 2.75x the user CPU of the same batches decoded in turns and ran
# 3x slower; with GOMP_SPINCOUNT=1000 it spent as little as they do. libgomp reads it when torch loads.
SPIN_COUNT = "1000"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def spin_briefly() -> None:
    """Before torch loads, in a process whose forward pass is fed by decoders on the other cores:
    OpenMP workers wait SPIN_COUNT loops, not 300,000 (the user's own setting wins)."""
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def restart_with_one_malloc_arena() -> None:
    """Replace this `featx serve` process by the same command with `MALLOC_ARENA_MAX=1` (same PID).

    The service runs the forward pass in a worker thread; with glibc's per-thread arenas its large
    activation buffers are handed back to the OS and faulted in again on every pass. Measured
    (efficientnet_lite0, one image, 40 interleaved runs, one core): 51-60 ms in a worker thread
    against 41-47 ms in the main thread; with one arena 44-48 ms in both. Served end to end
    (`benchmarks/serve_load.py --paired 40`), the per-request ratio to an offline decode + forward
    went from 1.52 and 1.43 to 1.26 and 1.34. glibc reads the variable only at process start (a
    `mallopt` later left both threads slow), hence the restart. Nothing happens when the user set
    `MALLOC_ARENA_MAX`, off Linux, or when featx is not the program (the Python API, tests)."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    program = Path(sys.argv[0])
    if not (program.name == "featx" or (program.name == "__main__.py" and program.parent.name == "cli")):
        return
    if not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, "MALLOC_ARENA_MAX": "1"})


def use_cores(count: int) -> None:
    """torch's intra-op threads for the rest of this process: a Ray actor's share of its node's
    cores, not all of them (each actor of a node would otherwise start one thread per core)."""
    import torch

    torch.set_num_threads(max(1, int(count)))


@contextmanager
def torch_threads(count: int | None):
    """torch's intra-op threads set to `count` for a block, then put back (None: left alone). On a
    CPU, decoding and the forward pass take turns on every core (`featx.extract.extractor.decode_plan`)."""
    if not count:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)

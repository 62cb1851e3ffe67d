"""Execution engines: where the planned shards of an extraction run. Each implements `Engine`, so
`featx.extract.job.extract` chooses one once (`make_engine`) and never branches on its kind. The
engines call the same per-shard worker (`featx.extract.worker`), so they give the same vectors and
statuses. Each engine module is imported only when chosen: `import featx` never imports Ray."""

from __future__ import annotations

from typing import TYPE_CHECKING, ContextManager, Protocol

from featx.errors import InputError
from featx.options import EXTRACT

if TYPE_CHECKING:
    import pandas as pd

    from featx.extract.extractor import Extractor

ENGINES = ("local", "ray")


class Engine(Protocol):
    name: str

    def extractor_options(self, options: dict) -> dict:
        """The driver's extractor options, adapted to where the network will run."""

    def session(self) -> ContextManager:
        """Held while the store is written (the Ray connection; nothing locally)."""

    def file_checker(self):
        """Who reads sizes, mtimes and hashes for the reconciliation: None = this process."""

    def run(self, writer, plan: "pd.DataFrame", shards: list[tuple[int, int]], extractor: "Extractor",
            ready: dict[str, dict]) -> None:
        """Extract `shards` (row ranges of `plan`) and commit each through `writer`. `ready`: views
        decoded ahead by a head start (used by the local engine only)."""


def make_engine(engine: str, *, progress: bool = True, ray_address: str | None = None,
                num_gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
                compile: bool = EXTRACT.compile) -> Engine:
    """The engine called `engine`, its options checked before any store is touched."""
    if engine not in ENGINES:
        raise InputError(f"unknown --engine '{engine}'; allowed: {', '.join(ENGINES)}")
    if engine == "local":
        if ray_address or num_gpus_per_worker is not None or cpus_per_worker is not None:
            raise InputError("--ray-address, --num-gpus-per-worker and --cpus-per-worker need --engine ray")
        from featx.extract.engines.local import LocalEngine

        return LocalEngine(progress=progress)
    if compile:
        raise InputError("--compile works with --engine local only; drop --compile for --engine ray")
    from featx.extract.engines.ray import RayEngine

    return RayEngine(address=ray_address, num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker,
                     progress=progress)

"""`featx extract --engine ray`: the planned shards run on a Ray cluster through Ray Data.

The driver plans (it holds the store's lock), turns each missing row range into one Ray Data row
(start, stop, planned paths) and streams them through `map_batches` on a pool of actors (two or
more per node by default; a small job's ranges are cut so that every actor gets some). Each actor
holds one loaded extractor, rebuilt from the store's config, reads and hashes the files itself,
decodes each row with featx's own decoder (a bad file is one error row, never a lost block — which
is why Ray Data's `read_images` is not used) and writes its shard files straight into the store
folder (atomic: write, fsync, rename). Only a small entry (file names, sha256, shape) travels back;
the driver commits it to the manifest as it lands. A dead actor is restarted and its shard retried
(`max_restarts`, `max_task_retries`); a shard delivered twice is committed once; a killed driver
leaves committed shards that the next run keeps, extracting only the missing ranges.

Change detection for re-runs and `--append` (each file's size and mtime, and the content hash of
the files whose size or mtime moved or that may be moved files) also runs on the cluster, as Ray
tasks over chunks of paths (`RayFiles`): the driver only compares the answers with the store."""

from __future__ import annotations

import json
import logging
import os
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from featx.errors import ConfigMismatchError, InputError
from featx.options import EXTRACT

if TYPE_CHECKING:  # an actor unpickles this module before its head start: nothing slow at import
    import pandas as pd

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'featx[ray]'"
DEFAULT_CPUS_PER_WORKER = 4  # at most, by default: each actor holds its own torch and network
MIN_UNIT_ROWS = 64  # smaller units of work cost more in Ray tasks and small files than they balance
UNITS_PER_ACTOR = 4  # so that the last unit leaves one actor at most a quarter of its share to finish alone
HEAD_START_PATHS = 4096  # planned paths a lone actor may decode while it loads (its buffer holds fewer)


def import_ray():
    """Ray, imported only when an engine needs it; a clear error when it is not installed."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--engine ray needs Ray Data, which is not installed ({exc}); install it with "
                         f"`{INSTALL_HINT}`, or use --engine local") from None
    return ray


class Connection:
    """A connection to `address` (None: a local cluster), made on first use (`get`) and shut
    down at the end of the `with` block when this object made it."""

    def __init__(self, address: str | None):
        self.address, self.started = address, False

    def get(self):
        ray = import_ray()
        if not ray.is_initialized():
            ray.init(address=self.address, logging_level=logging.WARNING, include_dashboard=False)
            self.started = True
        return ray

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import_ray().shutdown()
            self.started = False


def _probe_chunk(what: str, paths: list[str]) -> list:
    from featx.store.reconcile import file_sha256_or_none, file_stat

    return [(file_stat if what == "stat" else file_sha256_or_none)(p) for p in paths]


class RayFiles:
    """Stats and content hashes of many files, computed by Ray tasks on the cluster's nodes (the
    files live on the shared filesystem every node sees), `chunk` paths per task."""

    def __init__(self, connection: Connection, chunk: int = 256, progress: bool = True):
        self.connection, self.chunk, self.progress = connection, chunk, progress

    def _map(self, what: str, paths: list[str]) -> list:
        if not paths:
            return []
        ray = self.connection.get()
        from tqdm.auto import tqdm

        task = ray.remote(_probe_chunk).options(num_cpus=1, scheduling_strategy="SPREAD", max_retries=3)
        chunks = [paths[i:i + self.chunk] for i in range(0, len(paths), self.chunk)]
        refs = [task.remote(what, chunk) for chunk in chunks]
        order = {ref: k for k, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        pending = list(refs)
        with tqdm(total=len(paths), desc=f"{what} (ray)", unit="file", dynamic_ncols=True,
                  disable=not self.progress or len(chunks) < 2) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                k = order[done[0]]
                results[k] = ray.get(done[0])
                bar.update(len(chunks[k]))
        return [value for part in results for value in part]

    def stat(self, paths: list[str]) -> list:
        return [tuple(s) if s is not None else None for s in self._map("stat", list(paths))]

    def sha256(self, paths: list[str]) -> list:
        return self._map("sha256", list(paths))


class ShardWorker:
    """A Ray Data actor: one loaded extractor, shards in, committed-to-be shard entries out.

    `head_start`: the planned paths this actor will most likely get first and the driver's
    preprocessing (given to a pool of one actor). While the actor imports torch and rebuilds the
    network (seconds of one core) its other cores decode them (`featx.extract.head_start`); the first
    shards use those views."""

    def __init__(self, config: dict, config_hash: str, store_path: str, runtime: dict, threads: int | None,
                 head_start: dict | None = None):
        head = _actor_head_start(head_start or {}, config, runtime, threads)  # before torch is imported
        try:
            self._load(config, config_hash, runtime, threads)
            self.ready = head.take(self.extractor.backbone.preprocess.to_dict(), self.extractor.tta) if head else {}
        finally:
            if head:
                head.stop()
        self.store_path = store_path

    def _load(self, config: dict, config_hash: str, runtime: dict, threads: int | None) -> None:
        from featx.extract.extractor import extractor_from_config
        from featx.runtime import use_cores
        from featx.store import config_hash as hash_of

        if threads:  # this actor is its process's entry point (featx.runtime says why)
            use_cores(threads)
        self.extractor = extractor_from_config(config, **runtime)
        own = hash_of(self.extractor.config | {"weights_source": config.get("weights_source")})
        if own != config_hash:  # e.g. another featx / timm version on this node
            raise ConfigMismatchError(f"the extractor rebuilt on node {os.uname().nodename} has config hash {own}, "
                                      f"the store expects {config_hash}; install the same featx, torch and timm "
                                      "versions on every node")

    def __call__(self, batch: dict) -> dict:
        from featx.extract.worker import extract_shard
        from featx.store import write_shard

        entries, ok, ahead = [], [], []
        for start, paths in zip(batch["start"], batch["paths"]):
            start = int(start)
            rows = [{"row_id": start + i, "path": str(p)} for i, p in enumerate(paths)]
            waiting = len(self.ready)
            features, meta = extract_shard(self.extractor, rows, ready=self.ready or None)
            entry = write_shard(self.store_path, start, features, meta)
            entries.append(json.dumps(entry))
            ok.append(int((meta["status"] == "ok").sum()))
            ahead.append(waiting - len(self.ready))  # views used from the head start (taken as used)
        return {"start": np.asarray(batch["start"], dtype=np.int64), "stop": np.asarray(batch["stop"], dtype=np.int64),
                "entry": np.asarray(entries, dtype=object), "ok": np.asarray(ok, dtype=np.int64),
                "ahead": np.asarray(ahead, dtype=np.int64)}


def _actor_head_start(head_start: dict, config: dict, runtime: dict, threads: int | None):
    """Decoders of `head_start["paths"]` with `head_start["preprocess"]` on the actor's cores but
    one, or None where the actor would not use their views: its decoding must be the CPU plan's
    (Pillow in the actor's own process, TTA 1-2)."""
    from featx.extract.head_start import can_decode_ahead, start_decoding
    from featx.io.sources import ImageRecord
    from featx.runtime import spin_briefly

    paths, preprocess = head_start.get("paths"), head_start.get("preprocess")
    decode = "pil" if str(config["preprocess"].get("implementation", "")).startswith("pil") else "torch"
    processes = max(1, int(threads or 1)) - 1  # one core imports torch
    if (not paths or not preprocess or runtime.get("device") != "cpu"  # GPU actors: "auto" or "cuda"
            or not can_decode_ahead(workers=runtime.get("workers"), tta=config.get("tta", 1), decode=decode,
                                    device="cpu", processes=processes)):
        return None
    # `take` compares `preprocess` with the rebuilt extractor's own: any difference, nothing is used
    spin_briefly()  # this actor is its process's entry point (featx.runtime says why)
    return start_decoding([ImageRecord(str(p)) for p in paths], preprocess, int(config.get("tta", 1)), processes)


def work_units(shards: list[tuple[int, int]], actors: int, batch_size: int) -> list[tuple[int, int]]:
    """The planned shards, cut so that each of `actors` gets about UNITS_PER_ACTOR of them: a job
    of fewer shards than actors (1,200 images at the default 4,096 rows per shard) would leave
    actors idle, and a few large shards a long tail on one. Units are whole batches of at least
    MIN_UNIT_ROWS rows; a large job's shards are already small enough and are kept as planned.
    The store takes shards of any row ranges."""
    rows = sum(stop - start for start, stop in shards)
    if actors < 2 or not rows:
        return list(shards)
    unit = max(MIN_UNIT_ROWS, _ceil_div(rows, actors * UNITS_PER_ACTOR))
    units = []
    for start, stop in shards:  # each shard in equal pieces of whole batches
        pieces = _ceil_div(stop - start, unit)
        step = _ceil_div(_ceil_div(stop - start, pieces), batch_size) * batch_size
        units += [(s, min(s + step, stop)) for s in range(start, stop, step)]
    return units


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def default_cpus_per_worker(ray) -> float:
    """Two actors or more per node, of at most DEFAULT_CPUS_PER_WORKER CPUs each. Inside one
    actor decoding and the forward pass take turns; two actors on a node overlap them, one
    decoding while the other runs its forward pass. Measured on 2 cores, 1,200 JPEGs
    (benchmarks/extract_engines.py): two actors of 1 CPU matched the local engine, one actor of
    2 CPUs took 2-3 s longer."""
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return float(max(1, min(DEFAULT_CPUS_PER_WORKER, int(max(nodes, default=1)) // 2)))


def _pool_size(ray, most: int, cpus: float, gpus: float | None) -> int:
    """Actors of `cpus` CPUs (or `gpus` GPUs) the cluster holds, at most `most` (one per unit of work)."""
    resources = ray.cluster_resources()
    if gpus:
        available = int(resources.get("GPU", 0) // gpus)
        if available < 1:
            raise InputError(f"--num-gpus-per-worker {gpus}: the Ray cluster has {resources.get('GPU', 0):g} GPUs; "
                             "start nodes with GPUs, or drop the option to run on CPUs")
    else:
        available = int(resources.get("CPU", 1) // cpus)
        if available < 1:
            raise InputError(f"--cpus-per-worker {cpus:g} is more than the Ray cluster's {resources.get('CPU', 0):g} "
                             f"CPUs")
    return max(1, min(available, most))


def run_shards(writer, plan: pd.DataFrame, shards: list[tuple[int, int]], *, ray_address: str | None = None,
               num_gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
               batch_size: int = EXTRACT.batch_size, device: str = EXTRACT.device, amp: str = EXTRACT.amp,
               workers: int | None = EXTRACT.workers, progress: bool = True, preprocess: dict | None = None) -> None:
    """Extract `shards` (row ranges of `plan`) on Ray and commit each through `writer` as it lands.
    `preprocess`: the driver's extractor's (`Preprocess.to_dict()`), for a lone actor's head start."""
    if not shards:
        return
    if num_gpus_per_worker is not None and num_gpus_per_worker <= 0:
        raise InputError(f"--num-gpus-per-worker {num_gpus_per_worker} must be above 0 (or left out for CPU workers)")
    if cpus_per_worker is not None and cpus_per_worker <= 0:
        raise InputError(f"--cpus-per-worker {cpus_per_worker} must be above 0")
    if amp != "none" and not num_gpus_per_worker:
        raise InputError(f"--amp {amp} needs GPU workers: add --num-gpus-per-worker 1, or use --amp none")
    with Connection(ray_address) as connection:  # already connected when change detection ran on Ray
        ray = connection.get()
        cpus = float(cpus_per_worker or default_cpus_per_worker(ray))
        rows = sum(stop - start for start, stop in shards)
        size = _pool_size(ray, max(len(shards), rows // MIN_UNIT_ROWS), cpus, num_gpus_per_worker)  # units it can cut
        shards = work_units(shards, size, batch_size)
        threads = max(1, int(cpus))
        # the actor plans decoding as the local engine does, within its own share of the node's
        # cores: on CPUs decoding and the forward pass take turns on all of them (a decoding
        # process beside the forward pass stalls torch's threads, and forking one per shard
        # cost seconds); beside a GPU, decoding processes on the cores left
        runtime = {"device": device if num_gpus_per_worker else "cpu", "amp": amp, "batch_size": batch_size,
                   "workers": workers, "cores": threads}
        paths = plan["path"].to_numpy(dtype=object)
        items = [{"start": start, "stop": stop, "paths": [str(p) for p in paths[start:stop]]} for start, stop in shards]
        # a lone actor gets the shards in order, so it can decode the first ones while it loads;
        # in a larger pool which actor gets which shard is Ray Data's choice
        head_start = {"paths": list(islice((p for item in items for p in item["paths"]), HEAD_START_PATHS)),
                      "preprocess": preprocess} if size == 1 and preprocess else None
        # Ray Data's own INFO lines only with `featx -v`
        logging.getLogger("ray.data").setLevel(logging.getLogger("featx").getEffectiveLevel())
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # featx shows one bar: rows committed
        dataset = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=size),
            fn_constructor_kwargs={"config": writer.config, "config_hash": writer.hash,
                                   "store_path": str(Path(writer.path).resolve()), "runtime": runtime,
                                   "threads": threads, "head_start": head_start},
            # Ray Data's actor pools restart a killed actor and retry its unfinished shards without
            # limit (max_restarts=-1, max_task_retries=-1 are its defaults; passing them is deprecated)
            num_cpus=cpus, num_gpus=num_gpus_per_worker or None)
        log.info("ray: %d shards on %d actors (%g CPUs%s each)", len(items), size, cpus,
                 f", {num_gpus_per_worker:g} GPUs" if num_gpus_per_worker else "")
        _commit_as_they_land(writer, dataset, sum(b - a for a, b in shards), progress)


def _commit_as_they_land(writer, dataset, total_rows: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    ahead = 0
    with tqdm(total=total_rows, desc="extract (ray)", unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for row in dataset.iter_rows():
            ahead += int(row["ahead"])
            entry = json.loads(row["entry"])
            if writer.is_committed(entry["start"], entry["stop"]):  # a retried shard delivered twice
                log.info("ray: rows %d..%d arrived twice; the second copy is dropped", entry["start"], entry["stop"])
                continue
            writer.commit_written(entry)
            bar.update(entry["stop"] - entry["start"])
    if ahead:  # only a lone actor of 2 CPUs or more decodes ahead
        log.info("ray: %d of %d images were decoded while the actor loaded", ahead, total_rows)


class RayEngine:
    """The Engine for `--engine ray`: the driver plans, Ray actors extract (`run_shards`), and change
    detection for re-runs runs on the cluster too (`RayFiles`)."""

    name = "ray"

    def __init__(self, *, address: str | None = None, num_gpus_per_worker: float | None = None,
                 cpus_per_worker: float | None = None, progress: bool = True):
        import_ray()  # a missing Ray is reported before the store is touched
        self.address, self.progress = address, progress
        self.num_gpus_per_worker, self.cpus_per_worker = num_gpus_per_worker, cpus_per_worker
        self.connection = Connection(address)  # connects when first needed
        self.runtime: dict = {}

    def extractor_options(self, options: dict) -> dict:
        """The driver only plans (its config names the features) on the CPU; the actors pick their
        device, precision and decoder."""
        self.runtime = {key: options[key] for key in ("batch_size", "device", "amp", "workers")}
        decode = options["decode"]
        if decode == "auto":
            decode = "torch" if self.num_gpus_per_worker else "pil"
        return options | {"device": "cpu", "amp": "none", "decode": decode}

    def session(self) -> Connection:
        return self.connection

    def file_checker(self) -> RayFiles:
        return RayFiles(self.connection, progress=self.progress)

    def run(self, writer, plan, shards, extractor, ready) -> None:
        run_shards(writer, plan, shards, ray_address=self.address, num_gpus_per_worker=self.num_gpus_per_worker,
                   cpus_per_worker=self.cpus_per_worker, progress=self.progress,
                   preprocess=extractor.backbone.preprocess.to_dict(), **self.runtime)

"""Extraction engines side by side: `--engine local` against `--engine ray` (a local Ray cluster
on this machine) on the same JPEG files, same model, same settings, alternating in one run.

    python benchmarks/extract_engines.py [--images 1200] [--model efficientnet_lite0] [--rounds 3]
                                         [--cpus-per-worker N] [--batch-size 32] [--device cpu]

The files are the hymenoptera photos copied (not linked) to --images distinct files in a cache
folder (~/.cache/featx-bench). Each extraction writes a fresh store; the Ray cluster is started
once before timing (as on a cluster that is already up), so the Ray figure includes Ray Data's
planning, the actors' model loading and the driver's commits, but not `ray.init`; Ray Data's own
first use in this process (its stats actor, its imports: ≈ 2 s, paid by every `featx extract
--engine ray`) falls in the first Ray round. The engines alternate (local first in odd rounds,
Ray first in even ones). Prints img/s per engine and round, each round's ratio ray/local, the
ratio of the medians (target ≥ 0.85 where parallelism cannot help: one machine) and of the best
rounds, and checks that both stores hold the same vectors and statuses."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HYMENOPTERA = Path(os.environ.get("FEATX_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera"))
CACHE = Path(os.environ.get("FEATX_BENCH_CACHE", Path.home() / ".cache" / "featx-bench"))


def copied_jpegs(count: int) -> Path:
    """`count` JPEG files copied from the hymenoptera photos under distinct names (cached)."""
    folder = CACHE / f"jpegs-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / f"{i:06d}.jpg" for i in range(count)]
    if all(t.exists() for t in targets):  # cached: the photos themselves are not needed
        return folder
    sources = sorted(HYMENOPTERA.resolve().rglob("*.jpg"))
    if not sources:
        sys.exit(f"no JPEG files under {HYMENOPTERA}; set FEATX_HYMENOPTERA to the hymenoptera dataset folder")
    for i, target in enumerate(targets):
        if not target.exists():
            shutil.copyfile(sources[i % len(sources)], target)
    return folder


def run(engine: str, folder: Path, out: Path, args) -> float:
    from featx.extract.job import extract

    options = dict(model=args.model, batch_size=args.batch_size, device=args.device, progress=False,
                   shard_size=args.shard_size)
    if engine == "ray":
        options.update(engine="ray", cpus_per_worker=args.cpus_per_worker)
    start = time.perf_counter()
    store = extract(folder, out, **options)
    seconds = time.perf_counter() - start
    assert len(store) == args.images and store.complete
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=256, help="rows per shard (units of Ray work)")
    parser.add_argument("--cpus-per-worker", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    folder = copied_jpegs(args.images)
    cpus = len(os.sched_getaffinity(0))
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    print(f"{args.images} JPEGs, {args.model}, batch {args.batch_size}, {cpus} CPUs, shard {args.shard_size} rows; "
          f"ray {ray.__version__}")
    times: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="featx-engines-") as tmp:
        for r in range(args.rounds):
            for engine in ("local", "ray") if r % 2 == 0 else ("ray", "local"):
                out = Path(tmp) / f"{engine}-{r}"
                seconds = run(engine, folder, out, args)
                times[engine].append(seconds)
                print(f"round {r + 1} {engine:>5}: {seconds:7.1f} s  {args.images / seconds:7.1f} img/s", flush=True)
            print(f"round {r + 1} ratio ray/local {times['local'][-1] / times['ray'][-1]:.2f}", flush=True)
        from featx.store import FeatureStore

        local, remote = FeatureStore.open(Path(tmp) / "local-0"), FeatureStore.open(Path(tmp) / "ray-0")
        same_status = local.meta["status"].equals(remote.meta["status"])
        diff = float(np.nanmax(np.abs(local.features() - remote.features())))
    ray.shutdown()
    median = {engine: args.images / float(np.median(values)) for engine, values in times.items()}
    best = {engine: args.images / min(values) for engine, values in times.items()}
    print(f"median of {args.rounds} rounds: local {median['local']:.1f} img/s, ray {median['ray']:.1f} img/s, "
          f"ratio ray/local {median['ray'] / median['local']:.2f} (target >= 0.85)")
    print(f"best: local {best['local']:.1f} img/s, ray {best['ray']:.1f} img/s, ratio ray/local "
          f"{best['ray'] / best['local']:.2f}")
    print(f"same statuses: {same_status}; max |local - ray| = {diff:.2e}")


if __name__ == "__main__":
    main()

"""Peak memory of `featx index`: streamed (sample-trained, shard-by-shard add) against in-memory,
side by side on the same synthetic store, each build in a fresh process (growth = peak RSS minus
the RSS after imports); and the driver's commit
rate (manifest commits per second) for the scaling model.

    python benchmarks/index_memory.py [--rows 1000000] [--dim 256] [--kind ivf-sq8] [--nlist 1024]
                                      [--commits 2000]

Prints, per build mode: peak RSS, the index's own size (serialized bytes), the store's matrix size
and the build time; then commit_shard / commit_written calls per second at the first and last
hundred commits of a store with --commits shards (the manifest grows with every shard)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = {"backbone": "synthetic", "weights_id": "none", "weights_sha256": None, "layers": ["vec"],
          "pool": "avg", "preprocess": {}, "tta": 1, "dtype": "float32"}


def records(n: int):
    from featx.images import ImageRecord

    return [ImageRecord(f"/synthetic/{i:08d}.jpg", f"c{i % 100}", None) for i in range(n)]


def make_store(path: Path, rows: int, dim: int, shard: int = 4096) -> None:
    """Clustered vectors (100 centres), written shard by shard as extraction would."""
    from featx.store import StoreWriter

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (100, dim)).astype(np.float32)
    writer = StoreWriter(path, CONFIG, rows_per_shard=shard)
    work = writer.prepare(records(rows))
    for start in range(0, rows, shard):
        stop = min(start + shard, rows)
        X = centres[np.arange(start, stop) % 100] + rng.normal(0, 0.5, (stop - start, dim)).astype(np.float32)
        meta = work.plan.iloc[start:stop][["row_id", "path"]].copy()
        meta["sha256"], meta["status"], meta["error"] = [f"{i:064x}" for i in range(start, stop)], "ok", None
        meta["size"], meta["mtime_ns"] = 1, 1
        writer.commit_shard(start, {"vec": X}, meta)
    writer.finalize()


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
import faiss
from featx.index import build_index
baseline = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # RSS after imports
start = time.perf_counter()
index = build_index({store!r}, kind={kind!r}, nlist={nlist}, nprobe=16, rerank=0, stream={stream})
seconds = time.perf_counter() - start
print(json.dumps({{"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "seconds": seconds,
                  "baseline": baseline,
                  "index_bytes": int(faiss.serialize_index(index.faiss_index).nbytes)}}))
"""


def measure_build(store: Path, kind: str, nlist: int, stream: bool) -> dict:
    code = CHILD.format(repo=str(REPO), store=str(store), kind=kind, nlist=nlist, stream=stream)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_rate(folder: Path, commits: int, rows: int = 8, dim: int = 256) -> dict:
    """Calls per second of the driver's commit: whole shards (write + manifest) and entries of
    shards a worker wrote already (manifest only: what the Ray driver does)."""
    from featx.store import StoreWriter, write_shard

    result = {}
    for mode in ("commit_shard", "commit_written"):
        writer = StoreWriter(folder / mode, CONFIG, rows_per_shard=rows)
        work = writer.prepare(records(commits * rows))
        X = np.zeros((rows, dim), np.float32)
        times = []
        for k in range(commits):
            start = k * rows
            meta = work.plan.iloc[start:start + rows][["row_id", "path"]].copy()
            meta["sha256"], meta["status"], meta["error"], meta["size"], meta["mtime_ns"] = "0" * 64, "ok", None, 1, 1
            if mode == "commit_written":
                entry = write_shard(writer.path, start, {"vec": X}, meta)  # a worker's part, not timed
                t = time.perf_counter()
                writer.commit_written(entry)
            else:
                t = time.perf_counter()
                writer.commit_shard(start, {"vec": X}, meta)
            times.append(time.perf_counter() - t)
        writer.close()
        result[mode] = {"first_100_per_s": 100 / sum(times[:100]), "last_100_per_s": 100 / sum(times[-100:]),
                        "manifest_bytes": (writer.path / "manifest.json").stat().st_size}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kind", default="ivf-sq8")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--skip-index", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featx-index-memory-") as tmp:
        tmp = Path(tmp)
        if not args.skip_index:
            t = time.perf_counter()
            make_store(tmp / "store", args.rows, args.dim)
            matrix = args.rows * args.dim * 4
            print(f"store: {args.rows} x {args.dim} float32 = {matrix / 2**20:.0f} MiB, "
                  f"written in {time.perf_counter() - t:.0f} s", flush=True)
            print(f"{'build':<10}{'peak RSS MiB':>14}{'after imports':>15}{'growth':>8}{'index MiB':>11}{'seconds':>9}")
            for stream in (True, False):
                r = measure_build(tmp / "store", args.kind, args.nlist, stream)
                print(f"{'streamed' if stream else 'in-memory':<10}{r['peak_rss'] / 2**20:>14.0f}"
                      f"{r['baseline'] / 2**20:>15.0f}{(r['peak_rss'] - r['baseline']) / 2**20:>8.0f}"
                      f"{r['index_bytes'] / 2**20:>11.0f}{r['seconds']:>9.0f}", flush=True)
        rates = commit_rate(tmp / "commits", args.commits)
        for mode, r in rates.items():
            print(f"{mode}: {r['first_100_per_s']:.0f}/s over the first 100 commits, {r['last_100_per_s']:.0f}/s over "
                  f"the last 100 (manifest {r['manifest_bytes'] / 2**20:.1f} MiB at {args.commits} shards)")


if __name__ == "__main__":
    main()

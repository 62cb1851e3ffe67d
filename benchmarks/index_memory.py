"""Peak memory of `featx index`: streamed (sample-trained, shard-by-shard add) against in-memory,
side by side on the same synthetic store, each build in a fresh process (growth = peak RSS minus
the RSS after imports); and the driver's commit rate (shards committed per second) for the
scaling model.

    python benchmarks/index_memory.py [--rows 1000000] [--dim 256] [--kind ivf-sq8] [--nlist 1024]
                                      [--commits [2000 20000]] [--skip-index] [--streamed-only]

Builds: streamed with the inverted lists pre-sized from a first assignment pass (what `featx
index --stream` does), streamed with the lists growing as FAISS appends (before), in memory.
Prints, per build: peak RSS, the index's own size (serialized bytes), the store's matrix size
and the build time. Then, per store size in --commits: the driver's `commit_written` calls per
second (what the Ray driver does per shard that lands) now, with the commit log (one fsync'd
line per shard), over the first and the last 100 commits; and before, when every commit rewrote
and resealed the whole manifest (the same call followed by the full manifest write, timed at
that store size)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIG = {"backbone": "synthetic", "weights_id": "none", "weights_sha256": None, "layers": ["vec"],
          "pool": "avg", "preprocess": {}, "tta": 1, "dtype": "float32"}


def records(n: int):
    from featx.io.sources import ImageRecord

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
import json, os, resource, sys, tempfile, time
sys.path.insert(0, {repo!r})
import faiss
from featx.retrieval.index import build_index
from featx.store import library_versions
if not {presize}:  # the streamed build before the lists were pre-sized, for the side-by-side figure
    import featx.retrieval.stream
    featx.retrieval.stream.presize_lists = lambda *args, **kwargs: None
library_versions()  # the build records them: torch, torchvision and scikit-learn are imported before the baseline
# VmHWM: this program's own high-water mark. ru_maxrss is not: Linux carries the pre-exec image's
# peak over into it, i.e. the RSS of the benchmark process that forked this one (≈ 1 GiB after
# writing the store), which had hidden the streamed build's real peak
peak = lambda: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:"))) * 1024
baseline = int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()  # RSS after imports
start = time.perf_counter()
index = build_index({store!r}, kind={kind!r}, nlist={nlist}, nprobe=16, rerank=0, stream={stream})
seconds = time.perf_counter() - start
built = peak()
with tempfile.TemporaryDirectory() as folder:
    index.save(folder + "/index")  # what `featx index` does next
    size = os.path.getsize(folder + "/index/index.faiss")
print(json.dumps({{"peak_rss": built, "peak_after_save": peak(), "seconds": seconds, "baseline": baseline,
                  "index_bytes": size}}))
"""


def measure_build(store: Path, kind: str, nlist: int, stream: bool, presize: bool = True) -> dict:
    code = CHILD.format(repo=str(REPO), store=str(store), kind=kind, nlist=nlist, stream=stream, presize=presize)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def commit_rate(folder: Path, shards: int, rows: int = 8, dim: int = 256) -> dict:
    """Commits per second of a store growing to `shards` shards of `rows` rows: through the log
    (now) and with the whole manifest resealed per commit (before), at the same size."""
    from featx.store import StoreWriter, write_shard

    before_commits = 100 if shards <= 5000 else 20  # the old way costs seconds per commit at 20,000
    writer = StoreWriter(folder / str(shards), CONFIG, rows_per_shard=rows)
    writer.prepare(records((shards + before_commits) * rows))
    # a worker's part, done once and not timed: every entry names the same (real) files, so the
    # entries and the manifest have the sizes of real ones without writing 20,000 shards
    meta = pd.DataFrame({"row_id": np.arange(rows), "path": [f"/synthetic/{i:08d}.jpg" for i in range(rows)],
                         "sha256": "0" * 64, "status": "ok", "error": None, "size": 1, "mtime_ns": 1})
    template = write_shard(writer.path, 0, {"vec": np.zeros((rows, dim), np.float32)}, meta)
    times = []
    for k in range(shards + before_commits):
        entry = json.loads(json.dumps(template)) | {"start": k * rows, "stop": (k + 1) * rows}
        t = time.perf_counter()
        writer.commit_written(entry)
        if k >= shards:
            writer._write_manifest()  # the commit before the log: the whole manifest resealed and rewritten
        times.append(time.perf_counter() - t)
    result = {"after_first_100_per_s": 100 / sum(times[:100]),
              "after_last_100_per_s": 100 / sum(times[shards - 100:shards]),
              "before_per_s": before_commits / sum(times[shards:]), "before_commits": before_commits,
              "manifest_bytes": (writer.path / "manifest.json").stat().st_size}
    writer.close()
    shutil.rmtree(writer.path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--kind", default="ivf-sq8")
    parser.add_argument("--nlist", type=int, default=1024)
    parser.add_argument("--commits", type=int, nargs="*", default=[2000, 20000],
                        help="store sizes (shards) for the commit rate; none: skip it")
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--streamed-only", action="store_true", help="skip the in-memory build")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="featx-index-memory-") as tmp:
        tmp = Path(tmp)
        if not args.skip_index:
            t = time.perf_counter()
            make_store(tmp / "store", args.rows, args.dim)
            matrix = args.rows * args.dim * 4
            print(f"store: {args.rows} x {args.dim} float32 = {matrix / 2**20:.0f} MiB, "
                  f"written in {time.perf_counter() - t:.0f} s", flush=True)
            shard = 4096 * args.dim * 4
            print(f"one shard: 4096 rows = {shard / 2**20:.0f} MiB; growth = peak RSS minus RSS after imports")
            print(f"{'build':<19}{'peak RSS MiB':>14}{'after imports':>15}{'growth':>8}{'+ save':>8}"
                  f"{'index MiB':>11}{'growth / (index + shard)':>26}{'seconds':>9}")
            builds = [("streamed, presized", True, True), ("streamed, growing", True, False), ("in-memory", False,
                                                                                               True)]
            for name, stream, presize in builds if not args.streamed_only else builds[:2]:
                r = measure_build(tmp / "store", args.kind, args.nlist, stream, presize)
                growth, saved = r["peak_rss"] - r["baseline"], r["peak_after_save"] - r["baseline"]
                print(f"{name:<19}{r['peak_rss'] / 2**20:>14.0f}"
                      f"{r['baseline'] / 2**20:>15.0f}{growth / 2**20:>8.0f}{saved / 2**20:>8.0f}"
                      f"{r['index_bytes'] / 2**20:>11.0f}{growth / (r['index_bytes'] + shard):>26.2f}"
                      f"{r['seconds']:>9.0f}", flush=True)
        print(f"{'shards':>7}{'before /s':>11}{'after /s, first 100':>21}{'after /s, last 100':>20}"
              f"{'ratio':>8}{'manifest MiB':>14}")
        for shards in args.commits:
            r = commit_rate(tmp / "commits", shards)
            print(f"{shards:>7}{r['before_per_s']:>11.1f}{r['after_first_100_per_s']:>21.0f}"
                  f"{r['after_last_100_per_s']:>20.0f}{r['after_last_100_per_s'] / r['before_per_s']:>8.0f}"
                  f"{r['manifest_bytes'] / 2**20:>14.1f}", flush=True)


if __name__ == "__main__":
    main()

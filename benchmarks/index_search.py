"""Retrieval benchmark: flat (exact) against auto, side by side in one run.

    python benchmarks/index_search.py [--n 1000000] [--dim 256] [--queries 1000] [--real STORE]

Synthetic data: N seeded vectors from 1,000 clusters on a 32-dimensional latent subspace,
mapped to `dim` dimensions, plus isotropic noise in every dimension (--noise; CNN features are
low-rank with a decaying spectrum: small noise is the realistic case, large noise the hard one). For each index:
build time, bytes per vector (the serialized index), queries/s (batched, all cores) and
recall@10 against exact search (the query's own row left out). auto gets a memory budget of
1/8 of the flat index."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def synthetic(n: int, dim: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (1000, 32)).astype(np.float32)
    mixing = rng.normal(0, 1, (32, dim)).astype(np.float32) / np.sqrt(32)
    X = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(start + 100_000, n)
        latent = centers[rng.integers(0, 1000, stop - start)] + rng.normal(0, 0.35, (stop - start,
                                                                                     32)).astype(np.float32)
        X[start:stop] = latent @ mixing + rng.normal(0, noise, (stop - start, dim)).astype(np.float32)
    return X


def measure(store, kind: str, budget: int | None, queries: np.ndarray, truth: np.ndarray, k: int = 10, **options):
    import faiss

    from featx.retrieval.index import build_index

    start = time.perf_counter()
    index = build_index(store, kind=kind, memory_budget=budget, **options)
    build_s = time.perf_counter() - start
    size = faiss.serialize_index(index.faiss_index).size
    Q = np.asarray(store.features()[queries])
    index.search_vectors(Q[:10], k + 1)  # warm-up
    start = time.perf_counter()
    _, found = index.search_vectors(Q, k + 1)
    qps = len(Q) / (time.perf_counter() - start)
    recall = _recall_from(found, truth, queries, k)
    return {"kind": index.info["kind"], "factory": index.info["factory"], "build_s": build_s,
            "bytes_per_vector": size / index.faiss_index.ntotal, "qps": qps, "recall@10": recall,
            "params": index.info["params"]}


def _recall_from(found, truth, own_ids, k):
    total = 0.0
    for own, want, got in zip(own_ids, truth, found):
        want = [i for i in want if i != own][:k]
        got = [i for i in got if i != own][:k]
        total += len(set(want) & set(got)) / k
    return total / len(own_ids)


def run(store, label: str, n_queries: int, extra_kinds=()) -> None:
    import faiss

    X = np.ascontiguousarray(store.features(), dtype=np.float32).copy()
    faiss.normalize_L2(X)
    rng = np.random.default_rng(1)
    queries = np.sort(rng.choice(len(X), size=min(n_queries, len(X)), replace=False))
    exact = faiss.IndexFlatIP(X.shape[1])
    exact.add(X)
    _, truth = exact.search(X[queries], 11)
    del exact, X
    flat = measure(store, "flat", None, queries, truth)
    rows = [flat]
    budget = int(flat["bytes_per_vector"] * len(store) / 8)
    rows.append(measure(store, "auto", budget, queries, truth))
    for kind, options in extra_kinds:
        rows.append(measure(store, kind, None, queries, truth, **options))
    print(f"\n{label}: {len(store):,} vectors x {store.features().shape[1]} dims, {len(queries)} queries, cosine")
    print(f"{'index':<34}{'build s':>9}{'bytes/vec':>11}{'queries/s':>11}{'recall@10':>11}{'vs flat qps':>13}{'memory':>9}")
    for r in rows:
        print(f"{r['kind'] + ' ' + r['factory']:<34}{r['build_s']:>9.1f}{r['bytes_per_vector']:>11.0f}{r['qps']:>11.0f}"
              f"{r['recall@10']:>11.3f}{r['qps'] / flat['qps']:>12.1f}x{r['bytes_per_vector'] / flat['bytes_per_vector']:>9.3f}",
              flush=True)
        if r["params"]:
            print(f"    params: {r['params']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.01, 0.05],
                        help="isotropic noise added in all dimensions (full-rank noise makes neighbours "
                             "depend on incompressible detail)")
    parser.add_argument("--real", type=Path, help="also benchmark a real feature store")
    args = parser.parse_args()
    from conftest import make_feature_store

    for noise in args.noise:
        with tempfile.TemporaryDirectory() as tmp:
            X = synthetic(args.n, args.dim, noise=noise)
            store = make_feature_store(Path(tmp) / "synthetic", X, [None] * len(X), shard_size=250_000)
            del X
            run(store, f"synthetic clustered, 32-d latent + noise {noise} in all dims", args.queries)
    if args.real:
        from featx.store import FeatureStore

        run(FeatureStore.open(args.real), f"real features ({args.real})", args.queries,
            extra_kinds=[("hnsw", {}), ("ivf", {})])


if __name__ == "__main__":
    main()

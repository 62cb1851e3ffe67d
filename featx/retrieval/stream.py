"""Index builds that never hold the store's whole feature matrix.

Train on a sample of rows (gathered from the memory-mapped shards), then add the store shard by
shard, so peak memory is about the index plus one shard: a first pass over the shards counts the
rows each inverted list will hold, and the lists are allocated at that size before the add
(`presize_lists`). With `engine="ray"` the shard ranges are added to copies of the one trained
(empty) index in parallel Ray tasks, the lists are sized from the sub-indexes' list sizes, and
the sub-indexes are merged in row order (`faiss.merge_into`): the inverted lists then hold the
same ids in the same order as a single-machine build with that quantizer, so search results are
identical. Tuning compares against an exact search that is itself streamed shard by shard."""

from __future__ import annotations

import logging
import re

import numpy as np

from featx.errors import InputError
from featx.options import INDEX, SEARCH
from featx.retrieval.plan import (
    TARGET_RECALL,
    TUNE_QUERIES,
    auto_plan,
    empty_index,
    factory_plan,
    load_faiss,
    prepare_vectors,
    quiet_training,
    recall_at,
    rerank_factor,
    search_knob,
    search_reranked,
)
from featx.store import FeatureStore, check_rows_finite

log = logging.getLogger(__name__)

TRAIN_SAMPLE = 200_000  # what _train_and_add trains on, too
# a streamed IVF build trains on this many rows per inverted list (FAISS asks for 30-256 per
# centroid; below 39 its k-means warns): a sample far below the index's size, so training never
# holds more memory than the finished index (a fixed 200,000 rows x 256 dims, copied as residuals
# for SQ/PQ training, was most of the streamed build's peak)
TRAIN_PER_LIST = 64
MIN_TRAIN_SAMPLE = 20_000
AUTO_SAMPLE = 100_000  # rows the auto choice of layout is made on
STREAM_ABOVE_BYTES = 1 << 30  # a matrix above this is streamed (in-memory builds copy it twice)
MERGEABLE = ("flat", "ivf", "ivfpq", "opq-ivfpq", "ivf-sq8")  # HNSW graphs cannot be merged


def should_stream(store: FeatureStore, layer: str, requested: bool | None, engine: str) -> bool:
    if engine == "ray" or requested is not None:
        return engine == "ray" or bool(requested)
    d = int(np.prod(store.manifest["layers"][layer]["shape"]))
    return int(store.ok.sum()) * d * 4 > STREAM_ABOVE_BYTES


def _gather(store: FeatureStore, layer: str, rows: np.ndarray, metric: str) -> np.ndarray:
    X = np.ascontiguousarray(store.gather(layer, rows), dtype=np.float32)  # a new array: normalised in place
    check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
    if metric == "cosine":
        load_faiss().normalize_L2(X)
    return X


def train_sample_size(plan) -> int:
    """Rows a streamed build trains on: TRAIN_PER_LIST per inverted list, at most TRAIN_SAMPLE."""
    nlist = plan.params.get("nlist")
    if not nlist:
        return TRAIN_SAMPLE
    return min(TRAIN_SAMPLE, max(MIN_TRAIN_SAMPLE, TRAIN_PER_LIST * int(nlist)))


def _sample(ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    if len(ids) <= n:
        return ids
    return np.sort(np.random.default_rng(seed).choice(ids, n, replace=False))


def choose_plan(store, layer, ids, d, kind, metric, faiss_metric, reduce_dim, budget, nlist, pq_m, seed, rerank):
    """The layout for the whole store. `auto` runs featx's usual choice on a sample of rows, then
    sizes the inverted lists for the full row count."""
    n = len(ids)
    if kind != "auto":
        return factory_plan(kind, d, n, nlist=nlist, pq_m=pq_m, reduce_dim=reduce_dim)
    sample = _sample(ids, AUTO_SAMPLE, seed)
    _, plan, _ = auto_plan(_gather(store, layer, sample, metric), sample, d, reduce_dim, faiss_metric,
                             budget, seed, rerank)
    if "nlist" in plan.params:
        full = factory_plan("ivf", d, n, nlist=nlist, pq_m=None, reduce_dim=None).params["nlist"]
        plan.factory = re.sub(r"IVF\d+", f"IVF{full}", plan.factory)
        plan.params["nlist"] = full
    return plan


def trained_empty(plan, store, layer, ids, d, metric, faiss_metric, seed):
    """The index of `plan`, trained on a sample (`train_sample_size`), holding no vectors."""
    empty = empty_index(plan, len(ids), d, faiss_metric)
    if not empty.is_trained:
        quiet_training(empty, seed)
        sample = _gather(store, layer, _sample(ids, train_sample_size(plan), seed), metric)
        empty.train(sample)
        del sample
    return empty


def _shard_batches(store: FeatureStore, layer: str, metric: str, shard_numbers=None):
    """(vectors prepared for the index, their row ids) for each shard with ok rows, one at a time."""
    ok = store.ok
    shards = store.manifest["shards"]
    for number in range(len(shards)) if shard_numbers is None else shard_numbers:
        shard = shards[number]
        rows = np.flatnonzero(ok[shard["start"]:shard["stop"]])
        if not len(rows):
            continue
        X = prepare_vectors(np.asarray(store.shard_array(shard, layer)[rows]), metric)
        check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
        yield X, (rows + shard["start"]).astype(np.int64)


def add_shards(faiss_index, store: FeatureStore, layer: str, metric: str, shard_numbers=None) -> int:
    """Add the ok rows of the store's shards (all, or those numbered) one shard at a time."""
    added = 0
    for X, ids in _shard_batches(store, layer, metric, shard_numbers):
        faiss_index.add_with_ids(X, ids)
        added += len(ids)
    return added


def _array_lists(faiss_index):
    """(the IVF index inside `faiss_index`, its ArrayInvertedLists), or None (flat, HNSW, on disk)."""
    faiss = load_faiss()
    try:
        ivf = faiss.extract_index_ivf(faiss_index)
    except RuntimeError:  # no inverted lists
        return None
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return (ivf, lists) if isinstance(lists, faiss.ArrayInvertedLists) else None


def list_sizes(faiss_index) -> np.ndarray | None:
    """The length of each inverted list, or None for an index without array inverted lists."""
    found = _array_lists(faiss_index)
    if found is None:
        return None
    ivf, lists = found
    return np.array([lists.list_size(n) for n in range(ivf.nlist)], dtype=np.int64)


def reserve_lists(faiss_index, counts: np.ndarray) -> bool:
    """Give each (empty) inverted list room for `counts[list]` entries before they are added.

    Without it FAISS appends each shard's codes to growing `std::vector`s, whose spare capacity
    and freed old buffers (up to 2x the codes) were most of the streamed build's memory beyond
    the index and one shard. `ArrayInvertedLists.resize(list, n)` allocates exactly n entries;
    resizing back to 0 keeps that capacity (a std::vector never shrinks on resize), so the adds
    that follow fill it in place, in the same order as without it. A count that is short only
    makes that list grow as before."""
    found = _array_lists(faiss_index)
    if found is None or found[0].ntotal:
        return False
    _, lists = found
    for number in np.flatnonzero(counts):
        lists.resize(int(number), int(counts[number]))  # allocates exactly this many entries
        lists.resize(int(number), 0)  # empty again, the capacity kept
    return True


def presize_lists(faiss_index, store: FeatureStore, layer: str, metric: str) -> np.ndarray | None:
    """Size each inverted list for the store before the add: a first pass assigns every shard's
    rows to lists with the trained coarse quantizer (no encoding, one shard in memory at a time)
    and `reserve_lists` makes room. The list sizes, or None for an index without array inverted
    lists (flat, HNSW)."""
    faiss = load_faiss()
    found = _array_lists(faiss_index)
    if found is None or found[0].ntotal:
        return None
    ivf, _ = found
    outer = faiss.downcast_index(faiss_index)
    transforms = ([outer.chain.at(i) for i in range(outer.chain.size())]
                  if isinstance(outer, faiss.IndexPreTransform) else [])
    counts = np.zeros(ivf.nlist, dtype=np.int64)
    for X, _ in _shard_batches(store, layer, metric):
        for transform in transforms:  # OPQ rotation, PCA: what the add applies before assigning
            X = transform.apply(X)
        counts += np.bincount(ivf.quantizer.assign(X, 1).ravel(), minlength=ivf.nlist)
    reserve_lists(faiss_index, counts)
    return counts


def _add_range_task(blob: np.ndarray, store_path: str, layer: str, metric: str, numbers: list[int]):
    """On a Ray worker: the sizes of its inverted lists (None without lists) and the trained empty
    index plus the given shards, serialized (two return values: the driver reads the sizes of all
    sub-indexes before it loads any of them)."""
    import faiss

    sub = faiss.deserialize_index(blob)
    add_shards(sub, FeatureStore.open(store_path), layer, metric, numbers)
    return list_sizes(sub), faiss.serialize_index(sub)


def add_shards_on_ray(faiss_index, store: FeatureStore, layer: str, metric: str, plan_kind: str,
                      ray_address: str | None = None, parts: int | None = None) -> None:
    """Fill `faiss_index` (trained, empty) with sub-indexes built in parallel, merged in row order."""
    from featx.extract.engines.ray import import_ray

    if plan_kind not in MERGEABLE:
        raise InputError(f"--engine ray merges sub-indexes, which --kind {plan_kind} cannot do; use one of "
                         f"{', '.join(MERGEABLE)}, or --engine local")
    faiss = load_faiss()
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=ray_address, logging_level=logging.WARNING, include_dashboard=False)
    try:
        n_shards = len(store.manifest["shards"])
        parts = max(1, min(n_shards, parts or int(ray.cluster_resources().get("CPU", 1))))
        groups = [list(g) for g in np.array_split(np.arange(n_shards), parts) if len(g)]
        task = ray.remote(_add_range_task).options(max_retries=3, num_returns=2)
        blob = ray.put(faiss.serialize_index(faiss_index))
        refs = [task.remote(blob, str(store.path.resolve()), layer, metric, [int(i) for i in g]) for g in groups]
        sizes = ray.get([size for size, _ in refs])
        if sizes[0] is not None:  # each list sized for all parts before the first merge (see reserve_lists)
            reserve_lists(faiss_index, np.sum(sizes, axis=0))
        from tqdm.auto import tqdm

        for ref in tqdm([sub for _, sub in refs], desc="index (ray)", unit="part", disable=len(refs) < 2):
            sub = faiss.deserialize_index(ray.get(ref))
            faiss.merge_into(faiss_index, sub, False)  # in row order: same lists as one sequential add
            del sub
        log.info("index: %d sub-indexes built on Ray and merged (%d vectors)", len(groups), faiss_index.ntotal)
    finally:
        if started:
            ray.shutdown()


def exact_neighbours(store: FeatureStore, layer: str, Q: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Row ids of the exact top-k of each query over the ok rows, one shard in memory at a time."""
    faiss = load_faiss()
    l2 = metric == "l2"
    heap = faiss.ResultHeap(len(Q), k, keep_max=not l2)
    ok = store.ok
    for shard in store.manifest["shards"]:
        rows = np.flatnonzero(ok[shard["start"]:shard["stop"]])
        if not len(rows):
            continue
        X = prepare_vectors(np.asarray(store.shard_array(shard, layer)[rows]), metric)
        D, found = faiss.knn(Q, X, min(k, len(X)), metric=faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT)
        ids = np.where(found >= 0, rows[np.clip(found, 0, None)] + shard["start"], -1)
        if D.shape[1] < k:  # pad a small shard's answer to k columns
            pad = np.full((len(Q), k - D.shape[1]), np.inf if l2 else -np.inf, dtype=np.float32)
            D, ids = np.hstack([D, pad]), np.hstack([ids, np.full(pad.shape, -1)])
        heap.add_result(np.ascontiguousarray(D, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    heap.finalize()
    return heap.I


def tune_streaming(faiss_index, plan, store, layer, ids, metric, seed, fixed=None, rerank=0, k=SEARCH.k) -> dict:
    """`featx.retrieval.tune_search` without the matrix: queries are sampled rows, the truth is streamed."""
    faiss = load_faiss()
    extra = {"rerank": rerank} if rerank else {}
    knob = search_knob(plan)
    if knob is None:
        return extra
    name, values = knob
    space = faiss.ParameterSpace()
    if fixed is not None:
        space.set_index_parameter(faiss_index, name, int(fixed))
        return {name: int(fixed), **extra}
    queries = _sample(ids, TUNE_QUERIES, seed + 1)
    Q = _gather(store, layer, queries, metric)
    truth = exact_neighbours(store, layer, Q, k + 1, metric)
    if rerank:
        exact_of = lambda rows: _gather(store, layer, rows, metric)  # noqa: E731
        search = lambda q, kk: search_reranked(faiss_index, q, kk, rerank, metric, exact_of)[1]  # noqa: E731
    else:
        search = lambda q, kk: faiss_index.search(q, kk)[1]  # noqa: E731
    recall = 0.0
    for value in values:
        space.set_index_parameter(faiss_index, name, value)
        recall = recall_at(search, Q, truth, queries, k)
        if recall >= TARGET_RECALL:
            break
    return {name: value, "tuned_recall@10": round(recall, 4), **extra}


def build_streaming(store, layer, ids, d, *, kind, metric, faiss_metric, reduce_dim, budget, nlist, pq_m, nprobe,
                    rerank, seed, engine=INDEX.engine, ray_address=None):
    """(faiss index, plan, tuned params), built without loading the feature matrix."""
    plan = choose_plan(store, layer, ids, d, kind, metric, faiss_metric, reduce_dim, budget, nlist, pq_m, seed, rerank)
    built = trained_empty(plan, store, layer, ids, d, metric, faiss_metric, seed)
    if engine == "ray":
        add_shards_on_ray(built, store, layer, metric, plan.kind, ray_address)
    else:
        presize_lists(built, store, layer, metric)
        add_shards(built, store, layer, metric)
    tuned = tune_streaming(built, plan, store, layer, ids, metric, seed, fixed=nprobe,
                           rerank=rerank_factor(plan, rerank))
    return built, plan, tuned

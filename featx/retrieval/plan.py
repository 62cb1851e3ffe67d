"""Choosing, training and tuning a FAISS layout: the building blocks the in-memory build
(`featx.retrieval.index`) and the streamed build (`featx.retrieval.stream`) share."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np

from featx.errors import InputError
from featx.options import SEARCH

log = logging.getLogger(__name__)

KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq", "opq-ivfpq", "ivf-sq8")
METRICS = ("cosine", "l2", "ip")


TARGET_RECALL = 0.95
FLAT_MAX_ROWS = 50_000  # below this, exact search is fast enough and auto keeps it
TUNE_QUERIES = 1000


def parse_size(text: str | int | None) -> int | None:
    if text is None or isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise InputError(f"--memory-budget '{text}' is not a size; use e.g. 512MB, 2GB or a byte count")
    return int(float(match.group(1)) * 1024 ** "_kmgt".index(match.group(2) or "_"))


def load_faiss():
    import faiss

    return faiss


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous, and unit length for cosine; never modifies the caller's array."""
    X = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if metric == "cosine":
        load_faiss().normalize_L2(X)
    return X


@dataclass
class Plan:
    kind: str
    factory: str
    params: dict = field(default_factory=dict)


def factory_plan(kind: str, dim: int, n: int, *, nlist: int | None, pq_m: int | None, reduce_dim: int | None) -> Plan:
    d = reduce_dim or dim
    prefix = f"PCA{reduce_dim}," if reduce_dim else ""
    nlist = nlist or max(1, min(4 * int(math.sqrt(n)), n // 39 or 1, 65536))
    m = pq_m or _default_pq_m(d)
    if kind in ("ivfpq", "opq-ivfpq") and d % m:
        raise InputError(f"--pq-m {m} must divide the vector dimension {d}; try one of "
                         f"{', '.join(str(x) for x in (4, 8, 16, 32, 64) if d % x == 0)}")
    factories = {
        "flat": (f"{prefix}Flat", {}),
        "hnsw": (f"{prefix}HNSW32", {}),
        "ivf": (f"{prefix}IVF{nlist},Flat", {"nlist": nlist}),
        # "np": no polysemous training, which costs minutes and only serves Hamming filtering
        "ivfpq": (f"{prefix}IVF{nlist},PQ{m}np", {"nlist": nlist, "pq_m": m}),
        "opq-ivfpq": (f"{prefix}OPQ{m},IVF{nlist},PQ{m}np", {"nlist": nlist, "pq_m": m}),
        "ivf-sq8": (f"{prefix}IVF{nlist},SQ8", {"nlist": nlist}),  # 1 byte per dimension, near-exact
    }
    factory, params = factories[kind]
    return Plan(kind, factory, params)


def _default_pq_m(d: int) -> int:
    for m in (64, 32, 16, 8, 4, 2, 1):  # ~4 dimensions per 8-bit sub-quantizer, at most 64 bytes
        if d % m == 0 and d // m >= 2:
            return m
    return 1


def bytes_per_vector(plan: Plan, d: int) -> float:
    """Approximate index memory per vector (codes + id) for input dimension d."""
    d = plan_dim(plan, d)
    if plan.kind == "flat":
        return 4 * d
    if plan.kind == "hnsw":
        return 4 * d + 32 * 2 * 4
    if plan.kind == "ivf":
        return 4 * d + 8
    if plan.kind == "ivf-sq8":
        return d + 8
    return plan.params["pq_m"] + 8



def parse_reduce(reduce: str | None, d: int, n: int) -> int | None:
    if reduce in (None, "none"):
        return None
    match = re.fullmatch(r"pca:(\d+)", reduce)
    if not match or not 1 <= int(match.group(1)) <= min(d, n):
        raise InputError(f"--reduce '{reduce}' is not allowed for an index; use pca:K with K in 1..{min(d, n)}")
    return int(match.group(1))


def check_enough_vectors(plan: Plan, n: int, d: int) -> None:
    if plan.kind in ("ivfpq", "opq-ivfpq") and n < 256:
        raise InputError(f"--kind {plan.kind} needs at least 256 vectors to train 8-bit codebooks, the store has "
                         f"{n}; use --kind flat or hnsw (or auto)")
    if plan.kind == "opq-ivfpq" and n <= d:  # OPQ's rotation is learned from an n × d matrix
        raise InputError(f"--kind opq-ivfpq needs more vectors ({n}) than dimensions ({d}); use --kind ivfpq, "
                         "or --reduce pca:K with K below the number of vectors")
    if plan.params.get("nlist", 0) > n:
        raise InputError(f"--nlist {plan.params['nlist']} is above the number of vectors ({n}); use a smaller --nlist")


def quiet_training(index, seed: int) -> None:
    """Seed the clusterings, and let small collections train without FAISS's warnings."""
    faiss = load_faiss()
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            transform = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):  # bound OPQ's training time on large collections
                transform.niter = 20
                transform.max_train_points = 32_768
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.cp.seed = seed
    ivf.cp.min_points_per_centroid = 1
    if hasattr(ivf, "pq"):
        ivf.pq.cp.seed = seed
        ivf.pq.cp.min_points_per_centroid = 1


def empty_index(plan: Plan, n: int, d: int, faiss_metric):
    """The untrained, empty index `plan` describes for `n` vectors of `d` dimensions (flat and HNSW
    layouts wrapped so that they keep the store's row ids)."""
    faiss = load_faiss()
    check_enough_vectors(plan, n, plan_dim(plan, d))
    index = faiss.index_factory(d, plan.factory, faiss_metric)
    return faiss.IndexIDMap2(index) if plan.kind in ("flat", "hnsw") else index


def train_and_add(plan: Plan, X: np.ndarray, ids: np.ndarray, d: int, faiss_metric, seed: int):
    index = empty_index(plan, len(X), d, faiss_metric)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = X if len(X) <= 200_000 else X[np.sort(rng.choice(len(X), 200_000, replace=False))]
        quiet_training(index, seed)
        index.train(sample)
    index.add_with_ids(X, ids)
    return index


def plan_dim(plan: Plan, d: int) -> int:
    match = re.match(r"PCA(\d+),", plan.factory)
    return int(match.group(1)) if match else d


def rerank_factor(plan: Plan, requested: int | None) -> int:
    if requested is not None:
        return int(requested)
    compressed = plan.kind in ("ivfpq", "opq-ivfpq") or plan.factory.startswith("PCA")
    return 10 if compressed else 0


def search_reranked(faiss_index, Q: np.ndarray, k: int, factor: int, metric: str, exact_of):
    """Candidates from the compressed index, re-scored with exact vectors; (scores, ids)."""
    _, candidates = faiss_index.search(Q, k * factor)
    scores_out = np.full((len(Q), k), -np.inf, dtype=np.float32)
    ids_out = np.full((len(Q), k), -1, dtype=np.int64)
    for start in range(0, len(Q), 256):
        block = candidates[start:start + 256]
        unique, inverse = np.unique(block, return_inverse=True)
        valid = unique >= 0
        vectors = np.zeros((len(unique), Q.shape[1]), dtype=np.float32)
        vectors[valid] = exact_of(unique[valid])
        gathered = vectors[inverse.reshape(block.shape)]  # (queries, candidates, d)
        q = Q[start:start + 256, None, :]
        scores = -((gathered - q) ** 2).sum(-1) if metric == "l2" else (gathered * q).sum(-1)
        scores[block < 0] = -np.inf
        order = np.argsort(-scores, axis=1)[:, :k]
        scores_out[start:start + 256] = np.take_along_axis(scores, order, 1)
        ids_out[start:start + 256] = np.where(np.isfinite(scores_out[start:start + 256]),
                                              np.take_along_axis(block, order, 1), -1)
    return scores_out, ids_out


def searcher(index, X: np.ndarray, ids: np.ndarray, metric: str, rerank: int):
    """search(Q, k) -> row ids, with re-ranking from the in-memory vectors while building."""
    if not rerank:
        return lambda Q, k: index.search(Q, k)[1]
    exact_of = lambda rows: X[np.searchsorted(ids, rows)]  # noqa: E731 (ids are sorted)
    return lambda Q, k: search_reranked(index, Q, k, rerank, metric, exact_of)[1]


def search_knob(plan: Plan) -> tuple[str, list[int]] | None:
    """The search-time parameter the layout has (IVF's nprobe, HNSW's efSearch) and the values
    tuning tries, cheapest first; None for layouts without one."""
    if plan.kind in ("ivf", "ivfpq", "opq-ivfpq", "ivf-sq8"):
        return "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if v <= plan.params["nlist"]]
    if plan.kind == "hnsw":
        return "efSearch", [16, 32, 64, 128, 256, 512]
    return None


def tune_search(index, plan: Plan, X: np.ndarray, ids: np.ndarray, faiss_metric, seed: int, fixed: int | None = None,
          k: int = SEARCH.k, rerank: int = 0) -> dict:
    """The smallest nprobe / efSearch whose recall@k against exact search reaches the target."""
    faiss = load_faiss()
    metric = "l2" if faiss_metric == faiss.METRIC_L2 else "ip"
    search = searcher(index, X, ids, metric, rerank)
    space = faiss.ParameterSpace()
    knob = search_knob(plan)
    if knob is None:
        return {"rerank": rerank} if rerank else {}
    name, values = knob
    extra = {"rerank": rerank} if rerank else {}
    if fixed is not None:
        space.set_index_parameter(index, name, int(fixed))
        return {name: int(fixed), **extra}
    queries, truth = ground_truth(X, ids, faiss_metric, seed, k)
    recall = 0.0
    for value in values:
        space.set_index_parameter(index, name, value)
        recall = recall_at(search, X[queries], truth, ids[queries], k)
        if recall >= TARGET_RECALL:
            break
    return {name: value, "tuned_recall@10": round(recall, 4), **extra}


def ground_truth(X: np.ndarray, ids: np.ndarray, faiss_metric, seed: int, k: int):
    faiss = load_faiss()
    rng = np.random.default_rng(seed + 1)
    queries = np.sort(rng.choice(len(X), size=min(TUNE_QUERIES, len(X)), replace=False))
    exact = faiss.IndexFlat(X.shape[1], faiss_metric)
    exact.add(X)
    _, truth = exact.search(X[queries], k + 1)
    return queries, ids[truth]


def recall_at(search, Q: np.ndarray, truth: np.ndarray, self_ids: np.ndarray, k: int) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k, the query itself left out of both."""
    found = search(Q, k + 1)
    total = 0.0
    for own, want, got in zip(self_ids, truth, found):
        want = [i for i in want if i != own][:k]
        got = [i for i in got if i != own][:k]
        total += len(set(want) & set(got)) / max(1, len(want))
    return total / len(Q)




def auto_plan(X: np.ndarray, ids: np.ndarray, d: int, reduce_dim: int | None, faiss_metric, budget: int | None,
              seed: int, rerank: int | None = None):
    """Exact search for small collections; otherwise the most compact layout that reaches the
    recall target within the memory budget (what autofaiss does)."""
    n = len(X)
    flat = factory_plan("flat", d, n, nlist=None, pq_m=None, reduce_dim=reduce_dim)
    flat_bytes = bytes_per_vector(flat, reduce_dim or d) * n
    if n <= FLAT_MAX_ROWS and (budget is None or flat_bytes <= budget):
        return train_and_add(flat, X, ids, d, faiss_metric, seed), flat, {}
    dd = reduce_dim or d
    candidates = []
    if dd % 8 == 0:
        candidates.append(factory_plan("ivfpq", d, n, nlist=None, pq_m=dd // 8, reduce_dim=reduce_dim))
    if reduce_dim is None and d >= 64:  # features are low-rank: PCA to d/4, then 1 byte per dimension
        candidates.append(factory_plan("ivf-sq8", d, n, nlist=None, pq_m=None, reduce_dim=d // 4))
    if dd % 4 == 0:
        candidates.append(factory_plan("opq-ivfpq", d, n, nlist=None, pq_m=dd // 4, reduce_dim=reduce_dim))
    candidates += [factory_plan("ivf-sq8", d, n, nlist=None, pq_m=None, reduce_dim=reduce_dim),
                   factory_plan("hnsw", d, n, nlist=None, pq_m=None, reduce_dim=reduce_dim), flat]
    last = None
    for plan in sorted(candidates, key=lambda p: bytes_per_vector(p, d)):
        if budget is not None and bytes_per_vector(plan, d) * n > budget and plan is not flat:
            continue
        if plan.kind == "opq-ivfpq" and n <= plan_dim(plan, d):
            continue
        index = train_and_add(plan, X, ids, d, faiss_metric, seed)
        tuned = tune_search(index, plan, X, ids, faiss_metric, seed, rerank=rerank_factor(plan, rerank))
        log.info("auto index: %s gives %s", plan.factory, tuned)
        last = (index, plan, tuned)
        if plan.kind == "flat" or tuned.get("tuned_recall@10", 0) >= TARGET_RECALL:
            return last
    return last

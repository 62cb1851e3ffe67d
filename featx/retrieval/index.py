"""FAISS content-based retrieval over stored features: choose, train, tune, add, search,
save/load with checksums, and evaluate. Index ids are the store's row ids."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featx.errors import ConfigMismatchError, InputError, IntegrityError, StaleArtifactError, StoreError
from featx.io import atomic
from featx.options import INDEX, SEARCH
from featx.retrieval.metrics import excluded_neighbours, retrieval_scores
from featx.retrieval.plan import (  # noqa: F401 (KINDS, METRICS: re-exported)
    FLAT_MAX_ROWS,
    KINDS,
    METRICS,
    TARGET_RECALL,
    TUNE_QUERIES,
    Plan,
    auto_plan,
    bytes_per_vector,
    check_enough_vectors,
    factory_plan,
    ground_truth,
    load_faiss,
    parse_reduce,
    parse_size,
    plan_dim,
    prepare_vectors,
    quiet_training,
    recall_at,
    rerank_factor,
    search_reranked,
    searcher,
    train_and_add,
    tune_search,
)
from featx.store import (
    FeatureStore,
    check_rows_finite,
    content_fingerprint,
    library_versions,
    read_record,
    require_same_config,
    verify_recorded_sha256,
)
from featx.store.artifacts import check_output

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_JSON = "index.json"



class Index:
    """A trained FAISS index plus what it was built from (`info`)."""

    def __init__(self, faiss_index, info: dict, store: FeatureStore | None = None):
        self.faiss_index = faiss_index
        self.info = info
        self._store = store

    # --- building ---
    @classmethod
    def build(cls, store: FeatureStore | str | Path, *, layer: str | None = None, kind: str = INDEX.kind,
              metric: str = INDEX.metric, reduce: str | None = None, memory_budget: str | int | None = None,
              nlist: int | None = None, pq_m: int | None = None, nprobe: int | None = None,
              rerank: int | None = None, seed: int = INDEX.seed, stream: bool | None = None, engine: str = INDEX.engine,
              ray_address: str | None = None) -> "Index":
        """`rerank`: re-score the best k × rerank candidates of a compressed index with the exact
        vectors, read from the memory-mapped store (RAM holds only the codes). None: 10 for
        compressed layouts (PQ, PCA), 0 for the others.

        `stream`: train on a sample and add the store shard by shard, so memory holds the index and
        one shard, not the matrix (None: when the matrix is above 1 GiB). `engine="ray"` streams
        and adds the shard ranges in parallel on a Ray cluster (`ray_address`), then merges."""
        faiss = load_faiss()
        store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
        layer = store.check_layer(layer)
        if kind not in KINDS:
            raise InputError(f"unknown --kind '{kind}'; allowed: {', '.join(KINDS)}")
        if metric not in METRICS:
            raise InputError(f"unknown --metric '{metric}'; allowed: {', '.join(METRICS)}")
        ids = np.flatnonzero(store.ok).astype(np.int64)
        if len(ids) == 0:
            raise StoreError(f"store '{store.path}' has no successfully extracted rows to index; "
                             "check `featx info` for the errors")
        if engine not in ("local", "ray"):
            raise InputError(f"unknown --engine '{engine}'; allowed: local, ray")
        from featx.retrieval import stream as index_stream

        streaming = index_stream.should_stream(store, layer, stream, engine)
        if streaming:
            X, n, d = None, len(ids), int(np.prod(store.layer_shape(layer)))
        else:
            X = prepare_vectors(store.features(layer)[ids], metric)
            check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
            n, d = X.shape
        reduce_dim = parse_reduce(reduce, d, n)
        budget = parse_size(memory_budget)
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT

        if rerank is not None and rerank < 0:
            raise InputError(f"--rerank {rerank} must be 0 (off) or a positive factor")
        if streaming:
            index, plan, tuned = index_stream.build_streaming(
                store, layer, ids, d, kind=kind, metric=metric, faiss_metric=faiss_metric, reduce_dim=reduce_dim,
                budget=budget, nlist=nlist, pq_m=pq_m, nprobe=nprobe, rerank=rerank, seed=seed, engine=engine,
                ray_address=ray_address)
        elif kind == "auto":
            index, plan, tuned = auto_plan(X, ids, d, reduce_dim, faiss_metric, budget, seed, rerank)
        else:
            plan = factory_plan(kind, d, n, nlist=nlist, pq_m=pq_m, reduce_dim=reduce_dim)
            index = train_and_add(plan, X, ids, d, faiss_metric, seed)
            factor = rerank_factor(plan, rerank)
            tuned = tune_search(index, plan, X, ids, faiss_metric, seed, fixed=nprobe, rerank=factor)
        if budget is not None and bytes_per_vector(plan, d) * n > budget:
            warnings.warn(f"the {plan.kind} index needs about {bytes_per_vector(plan, d) * n / 2**20:.0f} MB, "
                          f"above --memory-budget {memory_budget}", stacklevel=2)
        info = {
            "format": 2, "store": str(Path(store.path).resolve()), "store_config_hash": store.config_hash,
            "store_fingerprint": store.fingerprint, "content_fingerprint": store.content_fingerprint,
            "extractor": store.config, "layer": layer, "kind": plan.kind, "factory": plan.factory,
            "metric": metric, "reduce": reduce, "params": {**plan.params, **tuned}, "ntotal": int(index.ntotal),
            "rows_covered": len(store), "dim": d, "versions": library_versions(),
            "built": {"streamed": streaming, "engine": engine},
            "build_options": {"kind": kind, "metric": metric, "reduce": reduce, "memory_budget": memory_budget,
                              "nlist": nlist, "pq_m": pq_m, "nprobe": nprobe, "rerank": rerank, "seed": seed},
        }
        return cls(index, info, store)

    # --- persistence ---
    def save(self, folder: str | Path) -> Path:
        """The FAISS file first, then the sealed index.json that names its sha256 (the commit point)."""
        faiss = load_faiss()
        folder = Path(folder)
        check_output(folder, "index", inputs=[self.info.get("store")])
        folder.mkdir(parents=True, exist_ok=True)
        # written by FAISS straight to the file: serializing to bytes first held two more copies
        # of the index in memory (3x its size at the end of a streamed build)
        with atomic.atomic_path(folder / INDEX_FILE) as tmp:
            faiss.write_index(self.faiss_index, str(tmp))
            self.info["sha256"] = atomic.file_sha256(tmp)
        self.info["ntotal"] = int(self.faiss_index.ntotal)
        self.info = atomic.write_sealed_json(folder / INDEX_JSON, self.info)
        return folder

    @classmethod
    def load(cls, folder: str | Path, store: FeatureStore | str | Path | None = None, *,
             allow_stale: bool = False, mmap: bool = SEARCH.mmap) -> "Index":
        """Verify index.json's seal and the index file's checksum before FAISS reads a byte, then
        that the store still holds the rows (ids and contents) the index was built from."""
        faiss = load_faiss()
        folder = Path(folder)
        info = read_record(folder, INDEX_JSON, "a featx index", "rebuild it with `featx index STORE -o INDEX_DIR`")
        if info.get("metric") not in METRICS:
            raise IntegrityError(f"index '{folder}' records metric {info.get('metric')!r}; allowed: "
                                 f"{', '.join(METRICS)}. Rebuild it with `featx index`")
        file = folder / INDEX_FILE
        verify_recorded_sha256(file, info.get("sha256"), INDEX_JSON, "rebuild it with `featx index`")
        if mmap:  # out-of-core search: the vectors stay on disk, the OS pages in what queries touch
            index = faiss.read_index(str(file), mmap_flags(info["kind"]))
        else:
            index = faiss.deserialize_index(np.fromfile(file, dtype=np.uint8))
        if index.ntotal != info["ntotal"]:
            raise IntegrityError(f"index holds {index.ntotal} vectors, {INDEX_JSON} says {info['ntotal']}; rebuild it")
        if store is None and Path(info["store"]).exists():
            store = FeatureStore.open(info["store"])
        elif store is not None and not isinstance(store, FeatureStore):
            store = FeatureStore.open(store)
        if store is not None:
            require_same_config(info["extractor"], store.config, f"index '{folder}'")
            if not allow_stale and store.content_fingerprint != info.get("content_fingerprint"):
                raise StaleArtifactError(
                    f"store '{store.path}' changed since index '{folder}' was built (rows or contents differ: "
                    f"fingerprint {info.get('content_fingerprint')} -> {store.content_fingerprint}; last re-run: "
                    f"{store.summary()['last_changes'] or 'unknown'}), so its row ids would point at other images. "
                    f"Run `featx index --update {folder}`")
        return cls(index, info, store)

    @property
    def store(self) -> FeatureStore:
        if self._store is None:
            raise StoreError(f"the store this index was built from ('{self.info['store']}') is not available; "
                             "pass it with --store")
        return self._store

    @store.setter
    def store(self, store: FeatureStore) -> None:
        """Serve the index from this (already checked) store: the service shares one open store among
        the artifacts built from it."""
        self._store = store

    def update(self) -> dict:
        """Bring the index up to date with its store: add appended rows when the indexed ones are
        untouched, else rebuild with the same options. Returns {"mode": ..., "rows": ...}."""
        store = FeatureStore.open(self.store.path)
        if store.config_hash != self.info["store_config_hash"]:
            raise ConfigMismatchError(f"store '{store.path}' now holds features of another extractor; rebuild the "
                                      f"index with `featx index {store.path} -o INDEX_DIR`")
        start = self.info["rows_covered"]
        if store.content_fingerprint == self.info.get("content_fingerprint"):
            mode, rows = "unchanged", 0
        elif len(store) >= start and content_fingerprint(store.meta.iloc[:start], store.config_hash) == \
                self.info.get("content_fingerprint"):
            new_ids = np.flatnonzero(store.ok[start:]).astype(np.int64) + start
            if len(new_ids):
                X = prepare_vectors(store.features(self.info["layer"])[new_ids], self.info["metric"])
                check_rows_finite(X, f"new rows of store '{store.path}'")
                self.faiss_index.add_with_ids(X, new_ids)
            mode, rows = "added", len(new_ids)
        else:  # rows were removed, moved or re-extracted: ids changed, so the index is rebuilt
            rebuilt = Index.build(store, layer=self.info["layer"], **self.info.get("build_options", {}))
            self.faiss_index, self.info = rebuilt.faiss_index, rebuilt.info
            mode, rows = "rebuilt", int(rebuilt.faiss_index.ntotal)
        self.info.update({"rows_covered": len(store), "store_fingerprint": store.fingerprint,
                          "content_fingerprint": store.content_fingerprint})
        self._store = store
        return {"mode": mode, "rows": rows}

    # --- searching ---
    def _clamp_k(self, k: int) -> int:
        if k < 1:
            raise InputError(f"-k {k} must be at least 1")
        if k > self.faiss_index.ntotal:
            warnings.warn(f"-k {k} is larger than the {self.faiss_index.ntotal} indexed items; using "
                          f"{self.faiss_index.ntotal}", stacklevel=2)
            return int(self.faiss_index.ntotal)
        return k

    def search_vectors(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, row ids): higher score = more similar (for l2, the negative squared distance)."""
        k = self._clamp_k(k)
        X = prepare_vectors(vectors, self.info["metric"])
        factor = int(self.info["params"].get("rerank", 0))
        if factor and self._store is not None:
            layer, metric = self.info["layer"], self.info["metric"]
            return search_reranked(self.faiss_index, X, k, factor, metric,
                                    lambda rows: prepare_vectors(self._store.gather(layer, rows), metric))
        if factor:
            warnings.warn("the store is not available: results are not re-ranked with exact vectors", stacklevel=2)
        distances, ids = self.faiss_index.search(X, k)
        return (-distances if self.info["metric"] == "l2" else distances), ids

    def search(self, queries, k: int = SEARCH.k, *, rows: Sequence[int] | None = None, exclude_self: bool = False,
               device: str = SEARCH.device, workers: int | None = None) -> pd.DataFrame:
        """Queries: image files/folders/globs, a (n, d) array, or `rows` of the store.
        One output row per query and rank: query, rank, row_id, path, label, score (+ status, error)."""
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(self.store)):
                raise InputError(f"--rows must be in 0..{len(self.store) - 1}")
            vectors = np.asarray(self.store.features(self.info["layer"])[rows])
            labels = [str(p) for p in self.store.paths[rows]]
            status = pd.DataFrame({"query": labels, "status": self.store.meta["status"].to_numpy()[rows],
                                   "error": None})
        elif isinstance(queries, np.ndarray):
            vectors = queries
            status = pd.DataFrame({"query": [f"vector {i}" for i in range(len(queries))], "status": "ok",
                                   "error": None})
        else:
            from featx.extract.extractor import extractor_from_config
            from featx.io.sources import scan_inputs

            config = dict(self.info["extractor"], layers=[self.info["layer"]])
            extractor = extractor_from_config(config, device=device, workers=workers)
            require_same_config(self.info["extractor"], extractor.config, f"index built on '{self.info['store']}'")
            paths = [r.path for r in scan_inputs(queries, missing_ok=True)]
            features, meta = extractor.features_of(paths)
            vectors = features[self.info["layer"]]
            status = meta.rename(columns={"path": "query"})[["query", "status", "error"]]
        ok = (status["status"] == "ok").to_numpy()
        extra = 1 if exclude_self else 0
        results = []
        if ok.any():
            scores, ids = self.search_vectors(np.asarray(vectors)[ok], k + extra)
            query_rows = rows[ok] if rows is not None else None
            meta = self.store.meta if self._store is not None else None
            for qi, (query, row_scores, row_ids) in enumerate(zip(status["query"][ok], scores, ids)):
                keep = [(s, i) for s, i in zip(row_scores, row_ids)
                        if i >= 0 and not (exclude_self and query_rows is not None and i == query_rows[qi])][:k]
                for rank, (score, row_id) in enumerate(keep, start=1):
                    results.append({"query": query, "rank": rank, "row_id": int(row_id),
                                    "path": meta["path"].iat[row_id] if meta is not None else None,
                                    "label": meta["label"].iat[row_id] if meta is not None else None,
                                    "score": float(score), "status": "ok", "error": None})
        for query, code, error in status[~ok].itertuples(index=False):
            results.append({"query": query, "rank": None, "row_id": None, "path": None, "label": None,
                            "score": None, "status": code, "error": error})
        frame = pd.DataFrame(results, columns=["query", "rank", "row_id", "path", "label", "score", "status", "error"])
        return frame.astype({"rank": "Int64", "row_id": "Int64"})

    # --- quality ---
    def evaluate(self, k: int = SEARCH.k, max_queries: int = 10_000, seed: int = INDEX.seed) -> dict:
        """Leave-one-out retrieval over the labelled store. A query's exact duplicates (same file
        content) and, when the inputs gave groups, the rows of its own group are not counted as
        neighbours: finding a copy of the query, or another image of the same patient, is not
        retrieval. For approximate indexes also the ANN recall@k against exact search, and queries/s."""
        store = self.store
        meta = store.meta
        labelled = np.flatnonzero(store.ok & meta["label"].notna().to_numpy())
        if len(labelled) < 2:
            raise InputError(f"store '{store.path}' has fewer than 2 labelled rows; --evaluate needs labels")
        k = self._clamp_k(k)
        rng = np.random.default_rng(seed)
        queries = np.sort(rng.choice(labelled, size=min(max_queries, len(labelled)), replace=False))
        X = np.asarray(store.features(self.info["layer"])[queries])
        excluded = excluded_neighbours(meta, store.ok)
        extra = 1 + max((len(excluded.get(q, ())) for q in queries), default=0)
        start = time.perf_counter()
        _, ids = self.search_vectors(X, min(k + extra, self.faiss_index.ntotal))
        qps = len(queries) / (time.perf_counter() - start)
        labels = meta["label"].to_numpy(dtype=object)
        counts = pd.Series(labels[store.ok]).value_counts()
        p1, pk, ap, rk, hit = [], [], [], [], []
        for q, row_ids in zip(queries, ids):
            skip = excluded.get(q, set()) | {q}
            neighbours = [i for i in row_ids if i >= 0 and i not in skip][:k]
            relevant = np.array([labels[i] == labels[q] for i in neighbours], dtype=float)
            same_label_skipped = sum(1 for i in skip if i != q and labels[i] == labels[q])
            total_relevant = counts.get(labels[q], 1) - 1 - same_label_skipped
            scores = retrieval_scores(relevant, k, total_relevant)
            p1.append(scores["precision@1"])
            pk.append(scores["precision@k"])
            ap.append(scores["ap@k"])
            rk.append(scores["recall@k"])
            hit.append(scores["hit_rate@k"])
        result = {"k": k, "queries": int(len(queries)), "precision@1": float(np.mean(p1)),
                  "precision@k": float(np.mean(pk)), "map@k": float(np.mean(ap)), "recall@k": float(np.mean(rk)),
                  "hit_rate@k": float(np.mean(hit)), "queries_per_s": float(qps), "kind": self.info["kind"],
                  "excluded": "exact duplicates" + (" and same-group rows" if store.groups is not None else "")}
        if self.info["kind"] != "flat":
            result["ann_recall@k"] = _ann_recall(self, X, queries, k)
        return result


def _ann_recall(index: Index, X: np.ndarray, queries: np.ndarray, k: int) -> float:
    faiss = load_faiss()
    store = index.store
    ids = np.flatnonzero(store.ok[: index.info["rows_covered"]]).astype(np.int64)
    data = prepare_vectors(store.features(index.info["layer"])[ids], index.info["metric"])
    metric = faiss.METRIC_L2 if index.info["metric"] == "l2" else faiss.METRIC_INNER_PRODUCT
    exact = faiss.IndexFlat(data.shape[1], metric)
    exact.add(data)
    Q = prepare_vectors(X, index.info["metric"])
    _, truth = exact.search(Q, k + 1)
    return recall_at(lambda q, kk: index.search_vectors(q, kk)[1], Q, ids[truth], queries, k)


def mmap_flags(kind: str) -> int:
    """How FAISS maps an index file instead of reading it: IVF kinds get on-disk inverted lists
    (`OnDiskInvertedLists` over the file: the codes, the bulk of the index, are paged in by the
    queries that visit them; centroids and transforms are loaded); flat maps its vectors
    (`IO_FLAG_MMAP_IFC`); HNSW maps its vectors but loads its graph."""
    faiss = load_faiss()
    read_only = faiss.IO_FLAG_READ_ONLY
    if kind in ("ivf", "ivfpq", "opq-ivfpq", "ivf-sq8"):
        return faiss.IO_FLAG_MMAP | read_only
    if kind in ("flat", "hnsw"):
        return faiss.IO_FLAG_MMAP_IFC | read_only
    raise InputError(f"--mmap: index kind {kind!r} cannot be memory-mapped; rebuild it as ivf, ivf-sq8, ivfpq, "
                     "opq-ivfpq, flat or hnsw")


def build_index(store, **options) -> Index:
    """`featx.build_index(store, kind=..., metric=...)`: build and tune an index over a store."""
    return Index.build(store, **options)

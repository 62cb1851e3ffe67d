"""The image-level memory bank (DN2, Bergman et al. 2020; PANDA): an image's anomaly score is the
mean distance of its pooled vector to the k nearest normal vectors, searched in a FAISS index that
is chosen like `featx index` chooses one (exact below 50,000 vectors, else the most compact layout
that keeps the recall target)."""

from __future__ import annotations

import numpy as np

from featx.errors import InputError
from featx.options import ANOMALY_FIT
from featx.retrieval.plan import auto_plan, load_faiss, prepare_vectors


class ImageMemory:
    """Normal vectors in a FAISS index; `score` gives the mean distance to the k nearest."""

    def __init__(self, faiss_index, *, metric: str, k: int, plan: dict | None = None):
        self.index, self.metric, self.k, self.plan = faiss_index, metric, int(k), plan or {}

    @classmethod
    def fit(cls, X: np.ndarray, *, metric: str = ANOMALY_FIT.metric, k: int = ANOMALY_FIT.k,
            seed: int = ANOMALY_FIT.seed) -> "ImageMemory":
        if metric not in ("cosine", "l2"):
            raise InputError(f"unknown --metric '{metric}'; allowed: cosine, l2")
        if len(X) < 1:
            raise InputError("no normal vectors to learn from; check --normal and the store's labels")
        faiss = load_faiss()
        V = prepare_vectors(X, metric)
        faiss_metric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index, plan, tuned = auto_plan(V, np.arange(len(V), dtype=np.int64), V.shape[1], None, faiss_metric, None,
                                       seed)
        return cls(index, metric=metric, k=k, plan={"kind": plan.kind, "factory": plan.factory, **tuned})

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mean distance to the k nearest normal vectors: 1 - cosine similarity, or Euclidean distance."""
        V = prepare_vectors(X, self.metric)
        k = min(self.k, int(self.index.ntotal))
        found, _ = self.index.search(V, k)
        distance = 1.0 - found if self.metric == "cosine" else np.sqrt(np.maximum(found, 0))
        return distance.mean(1).astype(np.float64)

    def to_bytes(self) -> bytes:
        return load_faiss().serialize_index(self.index).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, *, metric: str, k: int, plan: dict | None = None) -> "ImageMemory":
        return cls(load_faiss().deserialize_index(np.frombuffer(data, dtype=np.uint8)), metric=metric, k=k, plan=plan)

"""Normalisers and reducers as scikit-learn transformers, parsed from option strings
(`zscore`, `pca:0.95`, `pca:64:whiten`, `pq:16`)."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.preprocessing import MinMaxScaler, Normalizer, StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data

from featx.errors import InputError
from featx.options import TRAIN

NORMALIZERS = ("none", "l2", "zscore", "minmax")
REDUCER_FORMS = "none, pca:K, pca:FRACTION, pca:K:whiten, pq:M"
PCA_MEMORY_BUDGET = 2 << 30  # bytes of float64 working copy above which PCA runs incrementally


def make_normalizer(name: str):
    if name == "none":
        return "passthrough"
    if name == "l2":
        return Normalizer(norm="l2")
    if name == "zscore":
        return StandardScaler()
    if name == "minmax":
        return MinMaxScaler()
    raise InputError(f"unknown --normalize '{name}'; allowed: {', '.join(NORMALIZERS)}")


def make_reducer(spec: str, *, n_samples: int, n_features: int, seed: int = TRAIN.seed):
    """A transformer for `spec`, checked against the data's shape."""
    parts = spec.split(":")
    kind = parts[0]
    if spec == "none":
        return "passthrough"
    if kind == "pca" and len(parts) in (2, 3) and (len(parts) == 2 or parts[2] == "whiten"):
        components = _pca_components(parts[1], spec, n_samples, n_features)
        whiten = len(parts) == 3
        if n_samples * n_features * 8 > PCA_MEMORY_BUDGET and isinstance(components, int):
            return IncrementalPCA(n_components=components, whiten=whiten, batch_size=max(4 * components, 2048))
        return PCA(n_components=components, whiten=whiten, random_state=seed)
    if kind == "pq" and len(parts) == 2 and parts[1].isdigit():
        m = int(parts[1])
        if m < 1 or n_features % m:
            raise InputError(f"--reduce {spec}: M={m} must divide the feature dimension {n_features}; "
                             f"try one of {', '.join(str(d) for d in _divisors(n_features))}")
        return ProductQuantizer(m=m, seed=seed)
    raise InputError(f"unknown --reduce '{spec}'; allowed forms: {REDUCER_FORMS}")


def _pca_components(value: str, spec: str, n_samples: int, n_features: int):
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"--reduce {spec}: '{value}' is not a number; use pca:64 or pca:0.95") from None
    if 0 < number < 1:
        return number  # fraction of variance to keep
    limit = min(n_samples, n_features)
    if number != int(number) or not 1 <= number <= limit:
        raise InputError(f"--reduce {spec}: K={value} must be an integer in 1..{limit} "
                         f"(min of {n_samples} samples and {n_features} features) or a fraction in (0, 1)")
    return int(number)


def _divisors(n: int) -> list[int]:
    return [d for d in (1, 2, 4, 8, 16, 32, 64, 128, 256) if n % d == 0 and d <= n]


class ProductQuantizer(TransformerMixin, BaseEstimator):
    """FAISS product quantization, M sub-quantizers of 8 bits. `transform` returns the decoded
    (reconstructed) vectors, so the next step learns from what a PQ index would store; the learned
    codebooks are a plain numpy array (`codebooks_`, M × 256 × d/M), so the model saves safely."""

    def __init__(self, *, m: int = 8, seed: int = TRAIN.seed):
        self.m = m
        self.seed = seed

    def fit(self, X, y=None):
        import faiss

        X = validate_data(self, X, dtype=np.float32, reset=True)
        if X.shape[1] % self.m:
            raise InputError(f"pq: M={self.m} must divide the feature dimension {X.shape[1]}")
        if X.shape[0] < 256:
            raise InputError(f"pq needs at least 256 training vectors for 8-bit codebooks, got {X.shape[0]}; "
                             "use pca:K instead on small data")
        pq = faiss.ProductQuantizer(X.shape[1], self.m, 8)
        pq.verbose = False
        pq.cp.seed = self.seed
        pq.cp.min_points_per_centroid = 1  # small data is allowed; the accuracy report shows the cost
        pq.train(np.ascontiguousarray(X))
        self.codebooks_ = faiss.vector_to_array(pq.centroids).reshape(self.m, pq.ksub, pq.dsub)
        return self

    def _faiss_pq(self):
        import faiss

        pq = faiss.ProductQuantizer(self.n_features_in_, self.m, 8)
        faiss.copy_array_to_vector(np.ascontiguousarray(self.codebooks_.ravel(), dtype=np.float32), pq.centroids)
        return pq

    def encode(self, X) -> np.ndarray:
        check_is_fitted(self, "codebooks_")
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return self._faiss_pq().compute_codes(np.ascontiguousarray(X))

    def transform(self, X):
        codes = self.encode(X)
        return self._faiss_pq().decode(codes)

    @property
    def compression_ratio(self) -> float:
        return self.n_features_in_ * 4 / self.m  # float32 bytes per vector / one byte per sub-quantizer

"""t-SNE / UMAP / PCA maps of stored features, their quality numbers, and their pictures."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import InputError
from featx.options import PROJECT
from featx.store import FeatureStore, check_rows_finite

log = logging.getLogger(__name__)

METHODS = ("umap", "tsne", "pca")
COLORS = ("label", "split", "error")
QUALITY_SAMPLE = 2000  # trustworthiness and kNN accuracy are computed on at most this many points


def project(store: FeatureStore | str | Path, *, method: str = PROJECT.method, layer: str | None = PROJECT.layer,
            dims: int = PROJECT.dims, pre_pca: int = PROJECT.pre_pca, sample: int | None = PROJECT.sample,
            seed: int = PROJECT.seed, perplexity: float = PROJECT.perplexity, n_neighbors: int = PROJECT.n_neighbors,
            min_dist: float = PROJECT.min_dist) -> pd.DataFrame:
    """Coordinates (row_id, path, label, split, x, y[, z]) of the store's successfully extracted rows.
    `attrs['quality']` holds trustworthiness and kNN accuracies, `attrs['info']` the settings."""
    return fit_projection(store, method=method, layer=layer, dims=dims, pre_pca=pre_pca, sample=sample, seed=seed,
                          perplexity=perplexity, n_neighbors=n_neighbors, min_dist=min_dist)[0]


def fit_projection(store: FeatureStore | str | Path, *, method: str = PROJECT.method,
                   layer: str | None = PROJECT.layer, dims: int = PROJECT.dims, pre_pca: int = PROJECT.pre_pca,
                   sample: int | None = PROJECT.sample, seed: int = PROJECT.seed,
                   perplexity: float = PROJECT.perplexity, n_neighbors: int = PROJECT.n_neighbors,
                   min_dist: float = PROJECT.min_dist):
    """`project`'s coordinates and the fitted `featx.maps.placement.Placer` that puts new points on the
    same map (kept apart from the frame: pandas deep-copies `attrs` on every operation)."""
    from featx.maps.placement import Placer

    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    layer = store.check_layer(layer)
    if method not in METHODS:
        raise InputError(f"unknown --method '{method}'; allowed: {', '.join(METHODS)}")
    if dims not in (2, 3):
        raise InputError(f"--dims {dims} is not allowed; use 2 or 3")
    rows = np.flatnonzero(store.ok)
    skipped = int(len(store) - len(rows))
    if sample is not None:
        if sample < 1:
            raise InputError(f"--sample {sample} must be at least 1")
        if sample < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=sample, replace=False))
    if len(rows) < 3:
        raise InputError(f"store '{store.path}' has {len(rows)} usable rows; a projection needs at least 3")
    X = np.asarray(store.features(layer)[rows], dtype=np.float32)
    check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
    reduced, pre = _pre_pca(X, pre_pca, seed) if method != "pca" else (X, None)
    settings = {"method": method, "layer": layer, "dims": dims, "seed": seed, "rows": int(len(rows)),
                "skipped_failed_rows": skipped, "backbone": store.config.get("backbone"),
                "store": str(Path(store.path).resolve()), "store_fingerprint": store.fingerprint}
    if method == "pca":
        from sklearn.decomposition import PCA

        reducer = PCA(n_components=dims, random_state=seed)
        coords = reducer.fit_transform(X)
    elif method == "tsne":
        reducer, settings["perplexity"] = _tsne(reduced, dims, perplexity, seed)
        coords = np.asarray(reducer)
    else:
        reducer, settings["n_neighbors"] = _umap(reduced, dims, n_neighbors, min_dist, seed)
        coords = reducer.embedding_
    settings["pre_pca"] = reduced.shape[1] if method != "pca" and reduced.shape[1] < X.shape[1] else None
    meta = store.meta.iloc[rows]
    frame = pd.DataFrame({"row_id": meta["row_id"].to_numpy(), "path": meta["path"].to_numpy(),
                          "label": meta["label"].to_numpy(), "split": meta["split"].to_numpy(),
                          "status": meta["status"].to_numpy()})
    for axis, name in enumerate("xyz"[:dims]):
        frame[name] = coords[:, axis].astype(np.float32)
    frame.attrs["quality"] = _quality(X, coords, frame["label"].to_numpy(), seed)
    frame.attrs["info"] = settings
    return frame, Placer(method=method, reducer=reducer, pre=pre, dims=dims)


def _pre_pca(X: np.ndarray, components: int, seed: int):
    """(reduced X, the fitted PCA or None when X is kept as it is)."""
    if components < 1:
        raise InputError(f"--pre-pca {components} must be at least 1")
    k = min(components, X.shape[0], X.shape[1])
    if X.shape[1] <= components or k == X.shape[1]:
        return X, None
    from sklearn.decomposition import PCA

    pca = PCA(n_components=k, random_state=seed)
    return pca.fit_transform(X).astype(np.float32), pca


def _tsne(X: np.ndarray, dims: int, perplexity: float, seed: int):
    """openTSNE: FFT-accelerated interpolation for 2-D maps of 10,000 points and more (fast to ~1M
    points; its fixed cost makes it slower below), Barnes-Hut for smaller maps and for 3-D.
    Returns its TSNEEmbedding (an array of the coordinates that can also `transform` new points)."""
    from openTSNE import TSNE

    n = len(X)
    if n < 4:
        raise InputError(f"t-SNE needs at least 4 points, got {n}")
    if 3 * perplexity >= n:
        adjusted = max(1.0, (n - 1) / 3.0 - 1e-6)
        warnings.warn(f"--perplexity {perplexity} needs more than {3 * perplexity:.0f} points, there are {n}; "
                      f"using {adjusted:.1f}", stacklevel=2)
        log.warning("perplexity %s too large for %d points; using %.1f", perplexity, n, adjusted)
        perplexity = adjusted
    tsne = TSNE(n_components=dims, perplexity=perplexity, random_state=seed, n_jobs=-1, verbose=False,
                negative_gradient_method="auto" if dims <= 2 else "bh")
    return tsne.fit(X), perplexity


def _umap(X: np.ndarray, dims: int, n_neighbors: int, min_dist: float, seed: int):
    import umap

    n = len(X)
    if n_neighbors >= n:
        adjusted = max(2, n - 1)
        warnings.warn(f"--n-neighbors {n_neighbors} needs more than {n_neighbors} points, there are {n}; "
                      f"using {adjusted}", stacklevel=2)
        n_neighbors = adjusted
    if n_neighbors < 2:
        raise InputError(f"UMAP needs at least 3 points, got {n}")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")
        warnings.filterwarnings("ignore", message=".*spectral initialisation.*")
        reducer = umap.UMAP(n_components=dims, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                            init="spectral" if n > dims + 1 else "random")
        reducer.fit(X)
        return reducer, n_neighbors


def _quality(X: np.ndarray, coords: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from sklearn.manifold import trustworthiness
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(X), size=min(QUALITY_SAMPLE, len(X)), replace=False))
    k = max(1, min(10, len(idx) // 2 - 1))
    quality = {"trustworthiness": float(trustworthiness(X[idx], coords[idx], n_neighbors=k)),
               "trustworthiness_k": k, "sample": int(len(idx))}
    known = pd.notna(labels[idx])
    y = labels[idx][known].astype(str)
    counts = pd.Series(y).value_counts()
    if len(counts) >= 2 and counts.min() >= 2:
        folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
        knn = KNeighborsClassifier(n_neighbors=min(10, int(counts.min()) - 1 or 1))
        quality["knn_accuracy_map"] = float(cross_val_score(knn, coords[idx][known], y, cv=folds).mean())
        quality["knn_accuracy_original"] = float(cross_val_score(knn, X[idx][known], y, cv=folds).mean())
    return quality


def plot_projection(coords: pd.DataFrame, path: str | Path | None = None, *, color: str = PROJECT.color,
                    title: str | None = None):
    """A scatter of the map coloured by `color` (label, split or error), with a legend. Returns the
    matplotlib figure; saves it when `path` is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    column = color_column(color)
    groups = coords[column].fillna("(none)").astype(str)
    fig, ax = plt.subplots(figsize=(7.5, 6.2))
    names = sorted(groups.unique())
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    size = max(2.0, min(20.0, 4000 / max(1, len(coords))))
    for i, name in enumerate(names):
        part = coords[groups == name]
        ax.scatter(part["x"], part["y"], s=size, color=cmap(i % cmap.N), label=f"{name} ({len(part)})",
                   alpha=0.8, linewidths=0)
    ax.legend(markerscale=max(1.0, 8 / size), fontsize=8, loc="best", title=column)
    ax.set_xticks([])
    ax.set_yticks([])
    info = coords.attrs.get("info", {})
    ax.set_title(title or f"{info.get('method', '').upper()} of {info.get('backbone')} / {info.get('layer')} "
                          f"({len(coords)} images)", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, format="png")
        plt.close(fig)
    return fig


def color_column(color: str) -> str:
    if color not in COLORS:
        raise InputError(f"unknown --color '{color}'; allowed: {', '.join(COLORS)}")
    return {"label": "label", "split": "split", "error": "status"}[color]


def write_projection(coords: pd.DataFrame, out: str | Path, *, color: str = PROJECT.color, placer=None) -> dict[str,
                                                                                                                Path]:
    """coords.parquet, projection.png, projection.json and, given the fitted `placer` (from
    `fit_projection`), placer.joblib in `out` (`featx.api.write_projection` adds the page,
    projection.html). The record, written last, holds the
    sha256 of the coordinates and the placer: `featx.maps.placement.load_projection` checks them."""
    from featx.io import atomic
    from featx.store.artifacts import check_output

    out = Path(out)
    check_output(out, "projection", inputs=[coords.attrs.get("info", {}).get("store")])
    out.mkdir(parents=True, exist_ok=True)
    files = {"coords": out / "coords.parquet", "png": out / "projection.png", "json": out / "projection.json"}
    columns = ["row_id", "path", "label", "split"] + [c for c in "xyz" if c in coords]
    with atomic.atomic_path(files["coords"]) as tmp:
        coords[columns].to_parquet(tmp, index=False)
    with atomic.atomic_path(files["png"]) as tmp:
        plot_projection(coords, tmp, color=color)
    checksums = {"coords": atomic.file_sha256(files["coords"])}
    if placer is not None:
        from featx.maps.placement import PLACER_FILE

        files["placer"] = out / PLACER_FILE
        with atomic.atomic_path(files["placer"]) as tmp:
            placer.save(tmp)
        checksums["placer"] = atomic.file_sha256(files["placer"])
    elif (out / "placer.joblib").exists():  # a replaced projection's reducer must not outlive it
        (out / "placer.joblib").unlink()
    atomic.write_sealed_json(files["json"], {"info": coords.attrs.get("info", {}),
                                             "quality": coords.attrs.get("quality", {}), "files": checksums})
    return files

"""Duplicates: exact copies by content sha256, near-duplicates by cosine similarity of the
features (exact FAISS search), a calibrated similarity threshold, and the held-out leakage check
that `featx train-shallow` runs."""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from featx.errors import FeatxError, InputError
from featx.options import AUDIT

log = logging.getLogger(__name__)

CALIBRATIONS = ("auto", "copies", "distribution")
N_COPIES = 24
# robust z-score of log(1 - cosine) below which a nearest neighbour is a near-duplicate: 3.5, the
# usual outlier cut, flagged natural pairs in 1 of 10 clean synthetic sets; 5 flagged none
DUPLICATE_Z = 5.0
# with calibration copies as evidence, the distribution rule is only a floor against absurd
# thresholds (tiny images whose copies change a lot): a looser cut
FLOOR_Z = 3.0
THRESHOLD_RANGE = (0.80, 0.9999)
THRESHOLD_QUERIES = 4000  # rows whose nearest neighbour sets train-shallow's held-out duplicate threshold


def unit_rows(X: np.ndarray) -> np.ndarray:
    """float32 unit-length copies of the rows (the caller's array is not touched)."""
    import faiss

    U = np.array(X, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(U)
    return U


def cosine_knn(queries: np.ndarray, base: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine neighbours of unit `queries` among unit `base` rows: (similarities, positions)."""
    import faiss

    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, min(k, len(base)))


def self_knn(U: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest other rows of each row (itself removed by position, not by rank: an exact
    duplicate may come first)."""
    k = min(k, len(U) - 1)
    if k < 1:
        return np.zeros((len(U), 0), np.float32), np.zeros((len(U), 0), np.int64)
    sims, idx = cosine_knn(U, U, k + 1)
    keep = idx != np.arange(len(U))[:, None]
    keep[keep.sum(axis=1) > k, -1] = False  # self was not among the k + 1: drop the last
    return sims[keep].reshape(len(U), k), idx[keep].reshape(len(U), k)


# --- the threshold -------------------------------------------------------------------------------

def distribution_threshold(nn_sims: np.ndarray, z: float = DUPLICATE_Z) -> dict:
    """Near-duplicates are low outliers of the nearest-neighbour distance on a log scale: the
    threshold is the similarity whose log distance lies `z` robust standard deviations below the
    median. The spread is measured on the upper side only (duplicates sit in the lower tail, so
    many of them would widen a two-sided MAD and hide themselves)."""
    distance = np.clip(1.0 - np.asarray(nn_sims, dtype=np.float64), 1e-6, None)
    logs = np.log(distance)
    median = float(np.median(logs))
    upper = logs[logs > median]
    spread = float(np.median(upper - median)) * 1.4826 if len(upper) else 0.0
    raw = 1.0 - float(np.exp(median - z * spread)) if spread > 0 else 1.0 - float(np.exp(median)) / 2
    threshold = float(np.clip(raw, *THRESHOLD_RANGE))
    return {"method": "distribution", "threshold": threshold, "unclipped": raw,
            "rule": f"similarity whose log(1 - cosine) to the nearest neighbour is {z:g} robust standard deviations "
                    f"below the median (spread from the upper half), kept within {THRESHOLD_RANGE}",
            "nn_similarity_median": float(np.median(nn_sims)) if len(nn_sims) else None}


def copies_threshold(store, layer: str, rows: np.ndarray, U_rows: np.ndarray, nn_sims: np.ndarray, *,
                     seed: int = AUDIT.seed, n_copies: int = N_COPIES, progress: bool = False) -> dict:
    """Re-encode a seeded sample of the store's own images (downscaled to 70–100%, JPEG quality
    70–95: what re-saving, re-uploading or a light resize does) and extract them with the store's
    extractor. The threshold is as low as the least similar copy needs, but never below the
    distribution rule (where distinct images of this store start to look like duplicates).
    Harsher copies (half size and below) move the features as far as a different photo does;
    they are not the target."""
    from featx.extract.extractor import extractor_from_config
    from featx.io.decode import decode_image, read_bytes

    rng = np.random.default_rng(seed)
    paths = store.meta["path"].to_numpy(dtype=object)
    chosen = rng.choice(len(rows), size=min(n_copies, len(rows)), replace=False)
    config = dict(store.config, layers=[layer])
    extractor = extractor_from_config(config, workers=0, batch_size=16)
    with tempfile.TemporaryDirectory(prefix="featx-calibrate-") as tmp:
        copies, originals = [], []
        for n, position in enumerate(chosen):
            image = decode_image(read_bytes(paths[rows[position]])[0])
            copies.append(str(Path(tmp) / f"copy_{n:03d}.jpg"))
            re_encode(image, rng).save(copies[-1], "JPEG", quality=int(rng.integers(70, 96)))
            originals.append(position)
        features, meta = extractor.features_of(copies, progress=progress)
    ok = (meta["status"] == "ok").to_numpy()
    if not ok.any():
        raise ValueError("no calibration copy could be extracted")
    sims = np.sum(unit_rows(features[layer][ok]) * U_rows[np.asarray(originals)[ok]], axis=1)
    floor = distribution_threshold(nn_sims, FLOOR_Z)["threshold"]
    threshold = float(min(max(float(sims.min()), floor), THRESHOLD_RANGE[1]))
    return {"method": "copies", "threshold": threshold, "copies": int(ok.sum()),
            "copy_similarity": {"min": float(sims.min()), "p05": float(np.quantile(sims, 0.05)),
                                "median": float(np.median(sims)), "max": float(sims.max())},
            "distribution_rule": floor,
            "rule": f"the lowest cosine similarity between {int(ok.sum())} of the store's images and re-encoded "
                    "copies of them (downscaled to 70-100%, JPEG quality 70-95, extracted with the store's own "
                    f"extractor), but not below the distribution rule's {floor:.4f} (robust z-score -{FLOOR_Z:g} "
                    "of the nearest-neighbour log distance)"}


def re_encode(image, rng):
    """A downscaled copy with a random resampling filter (the JPEG quality is chosen at save)."""
    from PIL import Image

    scale = float(rng.uniform(0.7, 1.0))
    size = (max(8, round(image.width * scale)), max(8, round(image.height * scale)))
    resample = [Image.BILINEAR, Image.BICUBIC, Image.LANCZOS][int(rng.integers(3))]
    return image.resize(size, resample)


def calibrate(store, layer: str, rows: np.ndarray, U_rows: np.ndarray, nn_sims: np.ndarray, *, method: str = "auto",
              seed: int = AUDIT.seed, progress: bool = False) -> dict:
    """The near-duplicate threshold: re-encoded copies when the store's images and extractor are
    at hand ('auto' falls back to the distribution rule when they are not)."""
    if method not in CALIBRATIONS:
        raise InputError(f"unknown --calibrate '{method}'; allowed: {', '.join(CALIBRATIONS)}")
    if method in ("auto", "copies"):
        try:
            return copies_threshold(store, layer, rows, U_rows, nn_sims, seed=seed, progress=progress)
        except (FeatxError, OSError, ValueError, KeyError) as exc:
            if method == "copies":
                raise InputError(f"--calibrate copies needs the store's image files and its extractor's weights: "
                                 f"{exc}; use --calibrate distribution or --threshold") from exc
            log.info("audit: copy calibration not possible (%s); using the distribution rule", exc)
            reason = str(exc)
    found = distribution_threshold(nn_sims)
    if method == "auto":
        found["why_not_copies"] = reason
    return found


# --- pairs ---------------------------------------------------------------------------------------

def scope_of(label_a, label_b, split_a: str, split_b: str) -> str:
    if split_a != split_b:
        return "across_splits"
    if label_a is not None and label_b is not None and label_a != label_b:
        return "across_classes"
    return "within_class"


def duplicate_pairs(meta: pd.DataFrame, ok_rows: np.ndarray, nn_sims: np.ndarray, nn_idx: np.ndarray,
                    threshold: float) -> pd.DataFrame:
    """Unique pairs (a < b, positions in `meta`, which has a default index) that are exact copies
    (same sha256, any status) or whose cosine similarity reaches the threshold, with their scope."""
    pairs: dict[tuple[int, int], tuple[float, str]] = {}
    sha = meta["sha256"]
    for _, group in meta.loc[sha.notna()].groupby("sha256"):
        ids = group.index.to_numpy()
        for other in ids[1:]:  # each copy paired with the first occurrence
            pairs[(int(ids[0]), int(other))] = (1.0, "exact")
    for position, (sims, idx) in enumerate(zip(nn_sims, nn_idx)):
        for sim, j in zip(sims, idx):
            if sim < threshold:
                break  # neighbours come most similar first
            a, b = sorted((int(ok_rows[position]), int(ok_rows[j])))
            pairs.setdefault((a, b), (float(min(sim, 1.0)), "near"))
    labels = meta["label"].where(meta["label"].notna(), None).to_numpy(dtype=object)
    splits = meta["split"].fillna("").astype(str).to_numpy(dtype=object)
    records = []
    for (i, j), (sim, match) in sorted(pairs.items()):
        a, b = i, j
        records.append({"row_a": a, "row_b": b, "similarity": sim, "match": match,
                        "scope": scope_of(labels[i], labels[j], splits[i], splits[j]),
                        "labels_differ": labels[i] is not None and labels[j] is not None and labels[i] != labels[j]})
    return pd.DataFrame(records, columns=["row_a", "row_b", "similarity", "match", "scope", "labels_differ"])


# --- the check train-shallow runs ------------------------------------------------------------------

def heldout_near_duplicates(X_train: np.ndarray, X_eval: np.ndarray) -> dict:
    """How many held-out rows have a near-duplicate among the training rows, with the threshold
    from the distribution rule over all rows (no extraction: cheap enough for every training)."""
    U_train, U_eval = unit_rows(X_train), unit_rows(X_eval)
    U_all = np.concatenate([U_train, U_eval])
    # the threshold needs the distribution of nearest-neighbour similarities, not every row's:
    # a seeded sample of queries (each searched among all rows) keeps the check linear in the rows
    queries = np.sort(np.random.default_rng(0).choice(len(U_all), min(len(U_all), THRESHOLD_QUERIES), replace=False))
    sims_all, idx_all = cosine_knn(U_all[queries], U_all, 2)
    not_self = idx_all != queries[:, None]
    nearest = np.where(not_self[:, 0], sims_all[:, 0], sims_all[:, 1])  # self by position, as in self_knn
    threshold = distribution_threshold(nearest)["threshold"]
    sims, _ = cosine_knn(U_eval, U_train, 1)
    return {"count": int(np.sum(sims[:, 0] >= threshold)), "n_eval": len(U_eval), "threshold": threshold}


def warn_heldout_near_duplicates(X_train: np.ndarray, X_eval: np.ndarray, store_path) -> int:
    """Warn (logging + a UserWarning the CLI prints) when held-out rows copy training rows."""
    try:
        found = heldout_near_duplicates(X_train, X_eval)
    except (ValueError, RuntimeError) as exc:  # a check must never stop a training
        log.info("near-duplicate check skipped: %s", exc)
        return 0
    if found["count"]:
        message = (f"{found['count']} of {found['n_eval']} held-out images have a near-duplicate in the training "
                   f"rows (cosine ≥ {found['threshold']:.3f}): the held-out accuracy is optimistic; "
                   f"run `featx audit {store_path} -o AUDIT_DIR` to see them")
        log.info(message)  # the warning itself reaches the user (the CLI prints it); not twice
        warnings.warn(message, UserWarning, stacklevel=2)
    return found["count"]

"""`featx anomaly fit`: learn "normal" from a store's rows, calibrate the threshold on held-out
normal images (a val/test split, or out-of-fold over the normal rows), and evaluate against the
anomalous rows when the labels name them."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featx.anomaly.calibrate import evaluate, pixel_auroc, threshold_for
from featx.anomaly.memory import ImageMemory
from featx.anomaly.model import FORMAT, AnomalyModel
from featx.anomaly.patches import PatchMemory, check_patch_store, greedy_coreset, map_shapes, patch_features
from featx.errors import InputError, StoreError
from featx.options import ANOMALY_FIT
from featx.store import FeatureStore, check_rows_finite, library_versions

log = logging.getLogger(__name__)

HELD_OUT_SPLITS = ("val", "test")
GATHER_ROWS = 256  # patch mode turns maps into patches this many images at a time


@dataclass
class Rows:
    fit: np.ndarray  # row ids the memory learns from
    normal_held: np.ndarray  # held-out normal row ids (empty: calibrate out-of-fold on `fit`)
    anomalous_held: np.ndarray  # held-out rows whose label is not a normal one
    rule: str


def select_rows(store: FeatureStore, normal: Sequence[str] | None) -> Rows:
    meta = store.meta
    ok = store.ok
    labels = meta["label"].where(meta["label"].notna(), None).to_numpy(dtype=object)
    splits = meta["split"].fillna("").astype(str).to_numpy(dtype=object)
    if normal:
        present = sorted({str(v) for v in labels[ok] if v is not None})
        unknown = [label for label in normal if label not in present]
        if unknown:
            raise InputError(f"--normal {', '.join(unknown)}: no usable row of store '{store.path}' has that label; "
                             f"its labels: {', '.join(present) or 'none'}. Give one of them")
        is_normal = np.isin(labels.astype(str), list(normal)) & np.array([v is not None for v in labels])
    else:
        is_normal = np.ones(len(meta), bool)
    train = splits == "train"
    if train[ok].any():
        fit, held = ok & is_normal & train, ok & np.isin(splits, HELD_OUT_SPLITS)
        rule = "train split" + (f", labels {', '.join(normal)}" if normal else "")
    else:
        fit, held = ok & is_normal, ok & ~is_normal
        rule = f"labels {', '.join(normal)}" if normal else "every row"
    if not fit.any():
        raise StoreError(f"store '{store.path}' has no usable normal rows to learn from ({rule}); check --normal, "
                         "the labels and the splits with `featx info STORE`")
    return Rows(np.flatnonzero(fit), np.flatnonzero(held & is_normal), np.flatnonzero(held & ~is_normal), rule)


def read_features(store: FeatureStore, layers: list[str], rows: np.ndarray, shapes: dict | None) -> np.ndarray:
    """Pooled vectors (N, D) of the image-level layer, or patch features (N, H, W, D)."""
    if shapes is None:
        X = np.asarray(store.gather(layers[0], rows), dtype=np.float32)
        check_rows_finite(X, f"store '{store.path}' layer '{layers[0]}'")
        return X
    parts = []
    for start in range(0, len(rows), GATHER_ROWS):
        chunk = {layer: store.gather(layer, rows[start:start + GATHER_ROWS]) for layer in layers}
        for layer, maps in chunk.items():
            check_rows_finite(maps, f"store '{store.path}' layer '{layer}'")
        parts.append(patch_features(chunk, shapes))
    return np.concatenate(parts)


def build_memory(features: np.ndarray, *, patch: bool, k: int, metric: str, coreset: float, seed: int,
                 progress: bool):
    if not patch:
        return ImageMemory.fit(features, metric=metric, k=k, seed=seed)
    patches = features.reshape(-1, features.shape[-1])
    return PatchMemory(patches[greedy_coreset(patches, coreset, seed, progress)])


def score_with(memory, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(memory, ImageMemory):
        return memory.score(features), None
    return memory.score(features)


def out_of_fold(features: np.ndarray, cv: int, seed: int, **memory_options):
    """Each normal row scored by a memory built without it: the held-out normals of a store with no split."""
    from sklearn.model_selection import KFold

    n = len(features)
    if n < cv:
        raise InputError(f"{n} normal rows cannot be split into --cv {cv} folds to calibrate the threshold; give "
                         "a val split with normal images, more normal rows, or a smaller --cv")
    scores, grids = np.zeros(n), None
    for fold, (learn, held) in enumerate(KFold(cv, shuffle=True, random_state=seed).split(features)):
        log.info("anomaly: calibration fold %d/%d", fold + 1, cv)
        memory = build_memory(features[learn], seed=seed + fold, **memory_options)
        scores[held], fold_grids = score_with(memory, features[held])
        if fold_grids is not None:
            grids = np.zeros((n, *fold_grids.shape[1:]), np.float32) if grids is None else grids
            grids[held] = fold_grids
    return scores, grids


def fit_anomaly(store: FeatureStore | str | Path, *, normal: Sequence[str] | None = ANOMALY_FIT.normal,
                layer: str | None = ANOMALY_FIT.layer, patch: bool = ANOMALY_FIT.patch, k: int = ANOMALY_FIT.k,
                metric: str = ANOMALY_FIT.metric, coreset: float = ANOMALY_FIT.coreset, fpr: float = ANOMALY_FIT.fpr,
                cv: int = ANOMALY_FIT.cv, masks: str | Path | None = ANOMALY_FIT.masks, seed: int = ANOMALY_FIT.seed,
                progress: bool = False) -> AnomalyModel:
    """Learn normal from the store's rows (`normal` labels, else every row; the train split's when
    the store has one) and calibrate the threshold for `fpr` on held-out normals; see
    `featx.api.fit_anomaly` for the options."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    options = {"normal": list(normal) if normal else None, "layer": layer, "patch": bool(patch), "k": int(k),
               "metric": metric, "coreset": float(coreset), "fpr": float(fpr), "cv": int(cv), "seed": int(seed)}
    _check_options(options)
    if masks is not None and not patch:
        raise InputError("--masks gives pixel AUROC of heatmaps, which need a patch-level model; add --patch")
    layers, shapes, extractor = _patch_setup(store) if patch else ([store.check_layer(layer)], None, None)
    rows = select_rows(store, normal)
    memory_options = {"patch": bool(patch), "k": int(k), "metric": metric, "coreset": float(coreset),
                      "progress": progress}
    features = read_features(store, layers, rows.fit, shapes)
    memory = build_memory(features, seed=seed, **memory_options)
    if len(rows.normal_held):
        calibration = "held-out split"
        normal_scores, normal_grids = score_with(memory, read_features(store, layers, rows.normal_held, shapes))
        normal_rows = rows.normal_held
    else:
        calibration = f"out-of-fold ({cv} folds of the normal rows)"
        normal_scores, normal_grids = out_of_fold(features, cv, seed, **memory_options)
        normal_rows = rows.fit
    del features
    anomalous_scores, anomalous_grids = (score_with(memory, read_features(store, layers, rows.anomalous_held, shapes))
                                         if len(rows.anomalous_held) else (np.zeros(0), None))
    threshold = threshold_for(normal_scores, fpr)
    held = _held_out_frame(store, normal_rows, normal_scores, rows.anomalous_held, anomalous_scores, threshold)
    grids = None if normal_grids is None else np.concatenate(
        [normal_grids] + ([anomalous_grids] if anomalous_grids is not None else []))
    evaluation = evaluate(held["score"], held["anomalous"], threshold["threshold"], seed) \
        if rows.anomalous_held.size else None
    record = {
        "format": FORMAT, "mode": "patch" if patch else "image", "store": str(Path(store.path).resolve()),
        "store_fingerprint": store.fingerprint, "content_fingerprint": store.content_fingerprint,
        "store_config_hash": store.config_hash, "extractor": store.config, "layers": layers, "map_shapes": shapes,
        "options": options, "normal": {"rule": rows.rule, "rows": int(len(rows.fit))},
        "memory": _memory_summary(memory, len(rows.fit), shapes),
        "threshold": {**threshold, "calibration": calibration}, "evaluation": evaluation,
        # the overlay's colour scale: the typical normal patch is its bottom, the top 1% of normal images' peaks its top
        "heat_floor": float(np.median(normal_grids)) if normal_grids is not None else None,
        "heat_scale": float(np.quantile(normal_grids.max((1, 2)), 0.99)) if normal_grids is not None else None,
        "versions": library_versions(),
    }
    model = AnomalyModel(memory, record, held, grids, extractor)
    if masks is not None:
        record["evaluation"] = {**(evaluation or {}),
                                "pixel": _pixel_evaluation(model, masks, extractor.backbone.preprocess)}
    return model


def _patch_setup(store: FeatureStore) -> tuple[list[str], dict, object]:
    """The store's map layers, their (C, H, W) shapes and the extractor that made them."""
    from featx.extract.extractor import extractor_from_config

    layers = store.layers
    check_patch_store(store.config, layers, store.path)
    extractor = extractor_from_config({**store.config, "layers": layers}, device="cpu")
    return layers, map_shapes(extractor, layers), extractor


def _check_options(options: dict) -> None:
    from pydantic import ValidationError

    from featx.options import AnomalyFitOptions

    try:
        AnomalyFitOptions(**options)
    except ValidationError as exc:
        raise InputError("; ".join(f"--{str(e['loc'][0]).replace('_', '-')} {options.get(e['loc'][0])!r}: {e['msg']}"
                                   for e in exc.errors())) from None


def _memory_summary(memory, normal_images: int, shapes: dict | None) -> dict:
    if isinstance(memory, ImageMemory):
        return {"vectors": int(memory.index.ntotal), "plan": memory.plan, "images": normal_images}
    grid = max((s[1], s[2]) for s in shapes.values())
    return {"vectors": int(len(memory.bank)), "dim": int(memory.bank.shape[1]), "images": normal_images,
            "patches": int(normal_images * grid[0] * grid[1]), "grid": list(grid),
            "bytes": int(memory.bank.nbytes)}


def _held_out_frame(store: FeatureStore, normal_rows, normal_scores, anomalous_rows, anomalous_scores,
                    threshold: dict) -> pd.DataFrame:
    meta = store.meta
    row_ids = np.concatenate([normal_rows, anomalous_rows]).astype(np.int64)
    scores = np.concatenate([normal_scores, anomalous_scores])
    return pd.DataFrame({
        "row_id": meta["row_id"].to_numpy()[row_ids], "path": meta["path"].to_numpy(dtype=object)[row_ids],
        "label": meta["label"].to_numpy(dtype=object)[row_ids], "split": meta["split"].to_numpy(dtype=object)[row_ids],
        "anomalous": np.r_[np.zeros(len(normal_rows), bool), np.ones(len(anomalous_rows), bool)],
        "score": scores, "above_threshold": scores > threshold["threshold"],
    })


def read_masks(manifest: str | Path) -> dict[str, str]:
    """path -> mask file from a manifest's `path` and `mask` columns (paths relative to its folder)."""
    from featx.io.manifests import normalise_path

    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"--masks '{manifest}' is not a file; give the CSV or Parquet manifest with path and mask "
                         "columns")
    frame = (pd.read_parquet(manifest) if manifest.suffix.lower() == ".parquet"
             else pd.read_csv(manifest, dtype=str, keep_default_na=False))
    if not {"path", "mask"} <= set(frame.columns):
        raise InputError(f"--masks '{manifest}' has columns {', '.join(map(str, frame.columns))}; it needs 'path' "
                         "and 'mask' (an empty mask cell: no defect)")
    base = manifest.resolve().parent
    return {normalise_path(str(p), base): normalise_path(str(m), base) for p, m in zip(frame["path"], frame["mask"])
            if isinstance(m, str) and m.strip()}


def _pixel_evaluation(model: AnomalyModel, masks: str | Path, preprocess) -> dict:
    """Pixel AUROC of the held-out images' heatmaps: a normal image without a mask counts as clean."""
    from featx.anomaly.heatmap import mask_in_view

    given = read_masks(masks)
    size = int(preprocess.crop_size)
    heats, truths = [], []
    for i, row in enumerate(model.held_out.itertuples()):
        mask_file = given.get(row.path)
        if mask_file is None and row.anomalous:
            continue
        truth = (mask_in_view(Path(mask_file).read_bytes(), preprocess) if mask_file
                 else np.zeros((size, size), bool))
        heats.append(model.heatmaps_of(model.grids[i:i + 1])[0])
        truths.append(truth)
    with_masks = sum(bool(t.any()) for t in truths)
    return {"auroc": pixel_auroc(heats, truths), "images": len(heats), "images_with_defects": with_masks}

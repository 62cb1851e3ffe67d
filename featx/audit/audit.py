"""`featx audit`: label errors, duplicates and train/test leakage, outliers, and whether more
data would help — found on a store's features before they fool the results. The audit only
reads; with `write_manifest` it writes a copy of the inputs with suspect rows flagged, never
removed."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from featx.audit.data_size import doubling_estimate, points_from_model_report, subsampled_curve
from featx.audit.label_issues import CLASSIFIERS, make_probabilistic, out_of_sample_probabilities, rank_label_issues
from featx.audit.outliers import flag_outliers
from featx.errors import InputError, StoreError
from featx.io import atomic
from featx.learn.duplicates import calibrate as calibrate_threshold
from featx.learn.duplicates import duplicate_pairs, self_knn, unit_rows
from featx.options import AUDIT
from featx.store import FeatureStore, check_rows_finite, require_same_config

log = logging.getLogger(__name__)

KINDS = ("label_issue", "leakage", "conflicting_duplicate", "duplicate", "outlier")
KIND_TITLES = {"label_issue": "Label issues", "leakage": "Train/test leakage (near-duplicates across splits)",
               "conflicting_duplicate": "Duplicates with conflicting labels", "duplicate": "Duplicates within a class",
               "outlier": "Outliers"}
SUSPECT_COLUMNS = ["path", "kind", "score", "given_label", "suggested_label", "split", "row_id", "neighbour_path",
                   "neighbour_label", "similarity", "detail"]
NEIGHBOURS_SHOWN = 4
HELD_OUT = ("val", "test")
OUTLIER_K_FRACTION = 0.05  # the outlier score looks past clusters of junk up to ~5% of the rows (10…50)


@dataclass
class AuditResult:
    suspects: pd.DataFrame  # one row per (image, issue kind), most suspicious first within a kind
    scores: pd.DataFrame  # one row per store row: every score, flagged or not
    pairs: pd.DataFrame  # duplicate pairs (row_a < row_b)
    neighbours: dict  # row id -> [(row id, cosine)] nearest first, for ok rows
    summary: dict = field(default_factory=dict)


def run_audit(store: FeatureStore | str | Path, *, layer: str | None = AUDIT.layer, classifier: str = AUDIT.classifier,
              cv: int = AUDIT.cv, k: int = AUDIT.k, threshold: float | None = AUDIT.threshold,
              calibrate: str = AUDIT.calibrate, outlier_z: float = AUDIT.outlier_z,
              outlier_k: int | None = AUDIT.outlier_k, model: str | Path | None = None, learning_curve: bool = True,
              seed: int = AUDIT.seed, progress: bool = False) -> AuditResult:
    """Every check on one store; see `featx.api.audit` for the options."""
    store = store if isinstance(store, FeatureStore) else FeatureStore.open(store)
    layer = store.check_layer(layer)
    _check_options(classifier, k, threshold, outlier_k)
    meta = store.meta.reset_index(drop=True)
    ok_rows = np.flatnonzero(store.ok)
    if len(ok_rows) < 3:
        raise StoreError(f"store '{store.path}' has {len(ok_rows)} usable rows; the audit needs at least 3")
    X = np.asarray(store.gather(layer, ok_rows), dtype=np.float32)
    check_rows_finite(X, f"store '{store.path}' layer '{layer}'")
    labels = meta["label"].where(meta["label"].notna(), None).to_numpy(dtype=object)
    splits = meta["split"].fillna("").astype(str).to_numpy(dtype=object)

    # neighbours: one exact search serves near-duplicates, outliers and the page
    U = unit_rows(X)
    if outlier_k is None:
        outlier_k = int(np.clip(round(OUTLIER_K_FRACTION * len(ok_rows)), 10, 50))
    found = Neighbours(*self_knn(U, max(k, outlier_k)), k)
    scores = _score_frame(meta, ok_rows, found)
    outlier_k = min(outlier_k, found.sims.shape[1])
    outlier_score = flag_outliers(scores, ok_rows, found.sims, outlier_k, outlier_z)
    if threshold is None:
        calibration = calibrate_threshold(store, layer, ok_rows, U, found.nearest_sims[:, 0], method=calibrate,
                                          seed=seed, progress=progress)
    else:
        calibration = {"method": "given", "threshold": float(threshold), "rule": "--threshold"}
    pairs = duplicate_pairs(meta, ok_rows, found.sims, found.idx, calibration["threshold"])
    labelled = store.ok & np.array([v is not None for v in labels])
    label_info = _label_issues(store, scores, X, ok_rows, labels, splits, labelled, classifier=classifier, cv=cv,
                               seed=seed, progress=progress, learning_curve=learning_curve, model=model)
    neighbours = {int(r): [(int(ok_rows[j]), float(s)) for s, j in zip(found.nearest_sims[p], found.nearest_idx[p])]
                  for p, r in enumerate(ok_rows)}
    suspects = _suspects(scores, pairs, neighbours, labels, splits, outlier_k)
    summary = {
        "store": str(store.path), "layer": layer, "rows": len(meta), "ok_rows": int(len(ok_rows)),
        "labelled_rows": int(labelled.sum()), **_flag_counts(suspects, len(ok_rows)),
        "label_issues": {k: v for k, v in label_info.items() if k != "data"},
        "near_duplicates": _duplicate_summary(calibration, pairs, found),
        "outliers": {"score": f"cosine distance to the {outlier_k}-th nearest image", "k": int(outlier_k),
                     "rule": f"robust z-score (median, MAD) above {outlier_z}",
                     "median_score": float(np.median(outlier_score))},
        "enough_data": label_info.get("data", {"available": False,
                                               "sentence": "No learning curve: "
                                               + label_info.get("reason", "disabled (learning_curve=False).")}),
        "options": {"classifier": classifier, "cv": cv, "k": k, "threshold": threshold, "calibrate": calibrate,
                    "outlier_z": outlier_z, "outlier_k": outlier_k, "model": str(model) if model else None,
                    "seed": seed},
    }
    return AuditResult(suspects, scores, pairs, neighbours, summary)


def _check_options(classifier: str, k: int, threshold: float | None, outlier_k: int | None) -> None:
    if classifier not in CLASSIFIERS:
        raise InputError(f"unknown --classifier '{classifier}' for the audit; allowed: {', '.join(CLASSIFIERS)}")
    if k < 1:
        raise InputError(f"-k {k} must be at least 1 (neighbours used for outliers and near-duplicates)")
    if threshold is not None and not 0 < threshold <= 1:
        raise InputError(f"--threshold {threshold} is a cosine similarity: give a value in (0, 1], e.g. 0.95")
    if outlier_k is not None and outlier_k < 1:
        raise InputError(f"--outlier-k {outlier_k} must be at least 1")


class Neighbours:
    """Each usable row's nearest rows (cosine), searched once: `sims`/`idx` as far as the outlier score
    looks, `nearest_*` the first k (near-duplicates, the label check's page)."""

    def __init__(self, sims: np.ndarray, idx: np.ndarray, k: int):
        self.sims, self.idx = sims, idx
        self.nearest_sims, self.nearest_idx = sims[:, :k], idx[:, :k]


def _score_frame(meta: pd.DataFrame, ok_rows: np.ndarray, found: Neighbours) -> pd.DataFrame:
    """One row per store row, with its nearest usable neighbour; the checks add their scores."""
    scores = meta[["row_id", "path", "label", "split", "status"]].copy()
    scores["nn_row"] = pd.array([pd.NA] * len(meta), dtype="Int64")
    scores["nn_similarity"] = np.nan
    scores.loc[ok_rows, "nn_row"] = ok_rows[found.nearest_idx[:, 0]]
    scores.loc[ok_rows, "nn_similarity"] = found.nearest_sims[:, 0]
    return scores


def _label_issues(store, scores: pd.DataFrame, X: np.ndarray, ok_rows: np.ndarray, labels: np.ndarray,
                  splits: np.ndarray, labelled: np.ndarray, *, classifier: str, cv: int, seed: int, progress: bool,
                  learning_curve: bool, model) -> dict:
    """Label quality and suggested labels into `scores`; what the check did (and the learning curve)."""
    scores["label_quality"], scores["label_issue"], scores["suggested_label"] = np.nan, False, None
    if len(set(labels[labelled])) < 2:
        return {"available": False,
                "reason": "fewer than two labelled classes: label issues and the learning curve need labels"}
    rows = np.flatnonzero(labelled)
    y = labels[rows].astype(str)
    row_splits = splits[rows]
    has_split = (row_splits == "train").any() and np.isin(row_splits, HELD_OUT).any()
    train_mask = row_splits == "train" if has_split else np.ones(len(rows), bool)
    position = {int(r): i for i, r in enumerate(ok_rows)}
    X_labelled = X[[position[int(r)] for r in rows]]
    oos = out_of_sample_probabilities(X_labelled, y, train_mask, classifier=classifier, cv=cv, seed=seed,
                                      progress=progress)
    ranked = rank_label_issues(y, oos)
    target = rows[ranked["position"].to_numpy()]
    for column in ("label_quality", "label_issue", "suggested_label", "suggested_probability"):
        scores.loc[target, column] = ranked[column].to_numpy()
    info = {"available": True, "scheme": oos.scheme, "C": oos.C, "folds": oos.folds, "classes": oos.classes,
            "scored_rows": int(len(ranked)),
            "ranking": "cleanlab self-confidence (probability of the given label); flagged by cleanlab "
                       "find_label_issues (confident learning, prune_by_noise_rate)"}
    if learning_curve:
        info["data"] = _enough_data(store, model, X_labelled, y, train_mask, classifier, oos.C, seed, progress)
    return info


def _flag_counts(suspects: pd.DataFrame, usable_rows: int) -> dict:
    flagged_rows = int(suspects["row_id"].nunique())
    return {"counts": {kind: int((suspects["kind"] == kind).sum()) for kind in KINDS}, "flagged_rows": flagged_rows,
            "flagged_fraction": flagged_rows / max(1, usable_rows)}


def _duplicate_summary(calibration: dict, pairs: pd.DataFrame, found: Neighbours) -> dict:
    nearest = found.nearest_sims
    return {**calibration, "k": int(found.idx.shape[1]),
            "pairs": {scope: int((pairs["scope"] == scope).sum())
                      for scope in ("within_class", "across_classes", "across_splits")},
            "exact_pairs": int((pairs["match"] == "exact").sum()),
            "rows_with_nn_above_threshold": int(np.sum(nearest[:, 0] >= calibration["threshold"]))
            if nearest.shape[1] else 0}


def _enough_data(store, model, X, y, train_mask, classifier: str, C: float, seed: int, progress: bool) -> dict:
    """train-shallow's own learning curve when a model is given; else one computed here with the
    audit's classifier (its C fixed to the one the label check chose)."""
    if model is not None:
        folder = Path(model)
        report_file = folder / "report" / "report.json"
        if not report_file.is_file():
            raise InputError(f"--model '{folder}' has no report/report.json; give a model folder written by "
                             "`featx train-shallow`, or leave --model out to compute a learning curve here")
        report = json.loads(report_file.read_text())
        require_same_config(report["config"]["extractor"], store.config, f"model '{folder}'")
        points = points_from_model_report(report)
        return doubling_estimate(points, seed=seed, source=f"train-shallow's learning curve in {folder}")
    points = subsampled_curve(lambda: make_probabilistic(classifier, C, seed), X, y, train_mask, seed=seed,
                              progress=progress)
    return doubling_estimate(points, seed=seed, source=f"learning curve computed by the audit ({classifier}, C={C:g}, "
                                                       "stratified subsamples of 1/8 to all training images)")


def _suspects(scores: pd.DataFrame, pairs: pd.DataFrame, neighbours: dict, labels, splits,
              outlier_k: int) -> pd.DataFrame:
    paths = scores["path"].to_numpy(dtype=object)
    row_ids = scores["row_id"].to_numpy()
    records = []

    def add(row: int, kind: str, score: float, other: int | None, similarity: float | None, detail: str,
            suggested=None) -> None:
        if other is None and neighbours.get(row):
            other, similarity = neighbours[row][0]
        records.append({"path": paths[row], "kind": kind, "score": float(score), "given_label": labels[row],
                        "suggested_label": suggested, "split": splits[row] or None, "row_id": int(row_ids[row]),
                        "neighbour_path": None if other is None else paths[other],
                        "neighbour_label": None if other is None else labels[other],
                        "similarity": similarity, "detail": detail})

    issues = scores[scores["label_issue"].astype(bool)]
    for row in issues.itertuples():
        add(row.Index, "label_issue", 1.0 - row.label_quality, None, None,
            f"probability of the given label {row.label_quality:.3f}; of '{row.suggested_label}' "
            f"{row.suggested_probability:.3f}", row.suggested_label)
    for pair in pairs.itertuples():
        a, b = pair.row_a, pair.row_b
        how = "same file content (sha256)" if pair.match == "exact" else f"cosine {pair.similarity:.4f}"
        if pair.scope == "across_splits":
            # the held-out copy is the leak; between two held-out splits, the later row
            leak, source = (a, b) if splits[b] == "train" else (b, a)
            add(leak, "leakage", pair.similarity, source, pair.similarity,
                f"{how} to a '{splits[source] or 'no split'}' image"
                + ("; labels differ" if pair.labels_differ else ""))
        elif pair.scope == "across_classes":
            for row, other in ((a, b), (b, a)):  # which label is right is for the user to say
                add(row, "conflicting_duplicate", pair.similarity, other, pair.similarity,
                    f"{how} to an image labelled '{labels[other]}'", labels[other])
        else:
            add(b, "duplicate", pair.similarity, a, pair.similarity, f"{how} to an earlier image")
    outliers = scores[scores["outlier"].astype(bool)]
    for row in outliers.itertuples():
        add(row.Index, "outlier", row.outlier_score, None, None,
            f"cosine distance {row.outlier_score:.4f} to its {outlier_k}-th nearest image")
    frame = pd.DataFrame(records, columns=SUSPECT_COLUMNS)
    if frame.empty:
        return frame
    frame = frame.sort_values(["kind", "score"], ascending=[True, False], key=lambda s: s.map(KINDS.index)
                              if s.name == "kind" else s)
    # one row per (image, kind): an image duplicated several times keeps its strongest match
    return frame.drop_duplicates(["row_id", "kind"]).reset_index(drop=True)


# --- outputs -------------------------------------------------------------------------------------

def write_audit(result: AuditResult, out: str | Path, *, write_manifest: bool = AUDIT.write_manifest,
                store=None) -> dict[str, Path]:
    """audit.json, suspects.csv, scores.parquet and, on request, manifest.csv (`featx.api.audit`
    adds the page, audit.html)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "audit.json", "csv": out / "suspects.csv", "scores": out / "scores.parquet"}
    atomic.write_json(files["json"], {"summary": result.summary,
                                      "suspects": json.loads(result.suspects.to_json(orient="records")),
                                      "pairs": json.loads(result.pairs.to_json(orient="records"))})
    atomic.write_bytes(files["csv"], result.suspects.to_csv(index=False).encode())
    scores = result.scores.astype({"label": "object", "split": "object", "suggested_label": "object"})
    atomic.write_bytes(files["scores"], scores.to_parquet(index=False))
    if write_manifest:
        files["manifest"] = out / "manifest.csv"
        atomic.write_bytes(files["manifest"], cleaned_manifest(result).to_csv(index=False).encode())
    return files


def cleaned_manifest(result: AuditResult) -> pd.DataFrame:
    """Every store row, unchanged (path, label, split), plus `audit_suspect`, `audit_issues` and
    `audit_suggested_label`: `featx extract MANIFEST.csv` reads it and ignores the extra columns."""
    scores = result.scores
    issues = result.suspects.groupby("row_id")["kind"].agg(lambda kinds: ";".join(kinds))
    suggested = result.suspects.dropna(subset=["suggested_label"]).groupby("row_id")["suggested_label"].first()
    frame = scores[["path", "label", "split"]].copy()
    frame["audit_suspect"] = scores["row_id"].isin(issues.index).to_numpy()
    frame["audit_issues"] = scores["row_id"].map(issues).fillna("").to_numpy()
    frame["audit_suggested_label"] = scores["row_id"].map(suggested).to_numpy()
    frame["status"] = scores["status"].to_numpy()
    return frame

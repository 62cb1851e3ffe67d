"""One probe candidate's rows, scores and their cache: its screens (`halving.py`) and its full
scoring (`scoring.py`), each kept in PROBE_DIR/scores under a key of everything it depends on, so a
re-run or a longer budget reuses what is done; and what a candidate is and costs."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featx.io import atomic

SCORE_VERSION = 4  # bump when the scoring changes: cached scores are then recomputed


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CandidateRows:
    """One candidate's labelled rows: its store and layer, and where its scores are cached."""

    store: object
    layer: str
    rows: np.ndarray  # the store's labelled rows of the current inputs (`current_rows`)
    cache: Path | None = None  # where its scores are kept

    def load(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        meta = self.store.meta
        X = np.asarray(self.store.features(self.layer)[self.rows], dtype=np.float32)
        y = meta["label"].to_numpy(dtype=object)[self.rows].astype(str)
        return X, y, meta["split"].fillna("").to_numpy(dtype=object)[self.rows]

    def scores(self) -> dict:
        return json.loads(self.cache.read_text()) if self.cache.is_file() else {"classifiers": {}}


def current_rows(store, records) -> np.ndarray:
    """The store's ok, labelled rows of the images given now (a resumed store may hold others)."""
    meta = store.meta
    current = {r.path for r in records}
    return store.ok & meta["label"].notna().to_numpy() & meta["path"].isin(current).to_numpy()


def candidate_rows(key: tuple, context: dict, run) -> CandidateRows:
    model, layer, how = key
    store, rows = context["stores"][how], context["rows"][how]
    # not keyed on the classifier list: each classifier's score is kept on its own, so adding one to
    # --classifiers scores only that one, and a run stopped between classifiers keeps the finished ones
    key_hash = score_key(store, layer, rows, run.protocol, run.cv, run.seed)
    name = f"{safe_name(model)}-{how}-{safe_name(layer)}-{key_hash}.json"
    return CandidateRows(store, layer, rows, run.out / "scores" / name)


def screen(key: tuple, rows: int, context: dict, run) -> dict:
    """One screen of a candidate on `rows` of its training rows (cached with its scores)."""
    from featx.probe.halving import screen_score

    data = candidate_rows(key, context, run)
    scores = data.scores()
    screens = scores.setdefault("screens", {})
    if str(rows) not in screens:
        X, y, splits = data.load()
        train = splits == "train" if run.protocol.kind == "held-out" else np.ones(len(y), dtype=bool)
        screens[str(rows)] = screen_score(X[train], y[train], rows=rows, rbf="rbf-svm" in run.classifiers,
                                          folds=run.protocol.folds, seed=run.seed)
        atomic.write_json(data.cache, scores)
    return screens[str(rows)]


def score_in_full(key: tuple, context: dict, plan: dict, run) -> dict:
    """A candidate scored in full: every classifier (`scoring.score_features`) and retrieval mAP@10."""
    from featx.probe.scoring import retrieval_map, score_features

    data = candidate_rows(key, context, run)
    scores = data.scores()
    missing = [c for c in run.classifiers if c not in scores["classifiers"]]
    if missing or "map@10" not in scores:
        X, y, splits = data.load()
        for name in missing:
            scores["classifiers"] |= score_features(X, y, splits, run.protocol, classifiers=[name], cv=run.cv,
                                                    seed=run.seed)
            atomic.write_json(data.cache, scores)
        if "map@10" not in scores:
            scores |= {"map@10": retrieval_map(data.store, data.layer, k=10), "n": int(data.rows.sum())}
            atomic.write_json(data.cache, scores)
    by_classifier = {c: scores["classifiers"][c] for c in run.classifiers}
    best = max(by_classifier, key=lambda c: (by_classifier[c]["balanced_accuracy"], by_classifier[c]["accuracy"]))
    return describe(key, context, plan) | {
        "classifier": best, **{k: v for k, v in by_classifier[best].items() if k != "C"},
        "map@10": scores["map@10"], "n_images": scores["n"], "classifiers": by_classifier}


def describe(key: tuple, context: dict, plan: dict) -> dict:
    """What a candidate is and costs, scored or not."""
    model, layer, how = key
    store = context["stores"][how]
    shape = store.manifest["layers"][layer]["shape"]
    store_bytes = sum((store.path / s["features"][layer]["path"]).stat().st_size for s in store.manifest["shards"])
    return {"backbone": model, "layer": layer, "depth": plan["depths"][layer], "pool": how, "dim": int(np.prod(shape)),
            "img_per_s": context["throughput"], "forward_img_per_s": context["speed"][layer],
            "store_bytes": int(store_bytes),
            "vector_bytes": int(np.prod(shape)) * np.dtype(store.manifest["layers"][layer]["dtype"]).itemsize,
            "shift": context["shift"]["per_layer"].get(layer, {}).get("bn_distance"), "store": str(store.path)}


def score_key(store, layer: str, rows: np.ndarray, protocol, cv: int, seed: int) -> str:
    """What a candidate's cached scores depend on: the features, the rows, the protocol and the seed."""
    return digest(SCORE_VERSION, store.config_hash, layer, store.manifest.get("meta", {}).get("sha256"),
                   np.flatnonzero(rows).tolist(), protocol.to_dict(), cv, seed)



"""Retrieval quality: precision, mAP, recall and hit rate at k for leave-one-out queries, and which
neighbours a query may not count (its exact duplicates and the rows of its group)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def retrieval_scores(relevant: np.ndarray, k: int, total_relevant: int) -> dict:
    """Scores of one ranked list: `relevant[i]` is 1 when the i-th neighbour has the query's label.
    AP@k divides by min(k, relevant items that exist); hit_rate@k is 1 when any of the k is relevant."""
    relevant = np.asarray(relevant, dtype=float)[:k]
    hits = np.cumsum(relevant)
    precision_at = hits / np.arange(1, len(relevant) + 1) if len(relevant) else np.zeros(0)
    return {"precision@1": float(relevant[0]) if len(relevant) else 0.0,
            "precision@k": float(relevant.sum() / k),
            "ap@k": float((precision_at * relevant).sum() / max(1, min(k, total_relevant))),
            "recall@k": float(relevant.sum() / max(1, total_relevant)),
            "hit_rate@k": float(relevant.any())}


def excluded_neighbours(meta: pd.DataFrame, ok: np.ndarray) -> dict[int, set]:
    """Row -> the other rows that must not count as its neighbours: same content, same group."""
    excluded: dict[int, set] = {}
    for column in ("sha256", "group"):
        if column not in meta:
            continue
        values = meta[column].where(pd.Series(ok, index=meta.index))
        for _, rows in values.dropna().groupby(values.dropna()).groups.items():
            if len(rows) > 1:
                members = set(int(r) for r in rows)
                for r in members:
                    excluded.setdefault(r, set()).update(members - {r})
    return excluded

"""Outliers: images far from all the others (the wrong kind of image, blank or broken frames)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def flag_outliers(scores: pd.DataFrame, ok_rows: np.ndarray, searched_sims: np.ndarray, outlier_k: int,
                  outlier_z: float) -> np.ndarray:
    """Each usable row's outlier score into `scores` (`outlier_score`, and `outlier` above a robust
    z-score of `outlier_z`); returns the scores. The score is the cosine distance to the
    outlier_k-th nearest row, not the mean over the nearest: junk comes in small clusters (blank
    frames that are each other's nearest neighbours)."""
    outlier_score = 1.0 - searched_sims[:, outlier_k - 1]
    z = modified_z(outlier_score)
    scores["outlier_score"] = np.nan
    scores.loc[ok_rows, "outlier_score"] = outlier_score
    scores["outlier"] = False
    scores.loc[ok_rows, "outlier"] = z > outlier_z
    return outlier_score


def modified_z(values: np.ndarray) -> np.ndarray:
    """Robust z-scores: (value - median) / (1.4826 · MAD), with a mean-deviation fallback when the
    MAD is 0."""
    median = np.median(values)
    mad = np.median(np.abs(values - median))
    scale = mad * 1.4826 if mad > 0 else (np.mean(np.abs(values - median)) * 1.2533 or 1.0)
    return (values - median) / scale

"""featx predict: the extractor a model was trained on, then the model, on new image files."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featx.errors import InputError
from featx.extract.extractor import extractor_from_config
from featx.io.sources import scan_inputs
from featx.learn.model import ShallowModel
from featx.learn.representation import model_input
from featx.options import PREDICT


def predict(model: ShallowModel | str | Path, images: str | Path | Sequence[str | Path], *,
            tta: int | None = PREDICT.tta, top_k: int | None = PREDICT.top_k, device: str = PREDICT.device,
            batch_size: int = PREDICT.batch_size, workers: int | None = PREDICT.workers,
            progress: bool = False) -> pd.DataFrame:
    """One row per image: path, status, error, predicted label, its score, and per-class scores
    (probabilities, or decision values for classifiers without them; with TTA and no
    probabilities, the share of views voting for the class)."""
    model = model if isinstance(model, ShallowModel) else ShallowModel.load(model)
    recorded_tta = int(model.extractor_config.get("tta", 1))
    per_view = tta is not None and int(tta) != recorded_tta
    if per_view and recorded_tta != 1:
        raise InputError(f"this model was trained on features averaged over {recorded_tta} views; predict with "
                         f"--tta {recorded_tta} (or leave --tta out)")
    config = dict(model.extractor_config, layers=list(model.layers))
    extractor = extractor_from_config(config, tta=int(tta) if per_view else recorded_tta, per_view=per_view,
                                      device=device, batch_size=batch_size, workers=workers)
    model.check_features(extractor.config | {"weights_source": config.get("weights_source")}, extractor.layers)
    paths = [r.path for r in scan_inputs(images, missing_ok=True)]
    features, meta = extractor.features_of(paths, progress=progress)
    X = model_input(features, model.layers)
    ok = (meta["status"] == "ok").to_numpy()
    classes = list(model.classes)
    scores = np.full((len(meta), len(classes)), np.nan)
    if ok.any():
        scores[ok] = _scores(model, X[ok], per_view, classes)
    result = meta[["path", "status", "error"]].copy()
    best = np.where(ok, np.nanargmax(np.where(ok[:, None], scores, 0), axis=1), -1)
    result["predicted"] = [classes[i] if i >= 0 else None for i in best]
    result["score"] = [scores[r, i] if i >= 0 else np.nan for r, i in enumerate(best)]
    if top_k is not None:
        if top_k < 1:
            raise InputError(f"--top-k {top_k} must be at least 1")
        order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1)[:, :top_k]
        result["top"] = [[(classes[i], float(scores[r,
                                                    i])) for i in order[r]] if ok[r] else [] for r in range(len(meta))]
    else:
        for j, name in enumerate(classes):
            result[f"score:{name}"] = scores[:, j]
    return result


def _scores(model: ShallowModel, X: np.ndarray, per_view: bool, classes: list[str]) -> np.ndarray:
    if not per_view:
        return model.scores(X)
    n, views, dim = X.shape
    flat = X.reshape(n * views, dim)
    if model.has_proba:  # mean probability over the views
        return model.predict_proba(flat).reshape(n, views, -1).mean(1)
    votes = model.predict(flat).reshape(n, views)  # majority vote: the share of views per class
    return np.stack([(votes == c).mean(1) for c in classes], axis=1)

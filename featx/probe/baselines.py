"""What the probe's winner is compared with, on the probe's own images and protocol: featx's
defaults (the default `featx extract`, then `featx train-shallow` with nothing set) and the
raw-pixel baseline that train-shallow's report scores with the same rows, folds and tuning.

Both figures are honest: train-shallow chooses its representation and classifier inside every
outer fold, or on the 'train' rows only and scores once on the held-out rows. So when the
winner's ranking score (the best of many) and these figures are close, the defaults are enough;
when the pixels come close, frozen features are the wrong tool."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from featx.backbones import DEFAULT_BACKBONE
from featx.io import atomic

VERSION = 1  # bump when the figures change meaning: cached ones are then recomputed


def score_defaults(inputs, out: Path, *, weights: str, image_size: int | None, batch_size: int,
                   workers: int | None, device: str, cv: int, seed: int, progress: bool) -> dict:
    """{"default": its scores, "pixels": the raw-pixel baseline's} (cached under `out`/scores)."""
    from featx.extract.job import extract
    from featx.learn.classify import train_shallow
    from featx.learn.evaluation import SCORES

    store = extract(inputs, out / "stores" / "featx-defaults", model=DEFAULT_BACKBONE, weights=weights,
                    image_size=image_size, batch_size=batch_size, workers=workers, device=device, progress=progress)
    key = hashlib.sha256(json.dumps([VERSION, store.fingerprint, cv, seed]).encode()).hexdigest()[:16]
    cache = out / "scores" / f"defaults-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    report = train_shallow(store, cv=cv, seed=seed, learning_curve=False).report
    chosen = report["representation"]
    size = f", --image-size {image_size}" if image_size else ""
    figures = {"default": {"what": f"featx defaults: {DEFAULT_BACKBONE}{size}, train-shallow chose "
                                   f"{chosen['representation']} / {chosen['classifier']}",
                           "evaluation": report["evaluation"],
                           **{k: report[k] for k in SCORES}, **{f"{k}_std": report.get(f"{k}_std") for k in SCORES}}}
    baseline = report.get("baseline") or {}
    if baseline.get("available"):
        figures["pixels"] = {"what": f"raw-pixel baseline: {baseline['pixels']}, same protocol and tuning",
                             "evaluation": report["evaluation"], "accuracy": baseline["accuracy"],
                             "balanced_accuracy": baseline["balanced_accuracy"], "sentence": baseline["sentence"],
                             "warning": baseline["warning"]}
    atomic.write_json(cache, figures)
    return figures

"""Shared fixtures: seeded synthetic images, a tiny random-weight extractor setup, real data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = Path(os.environ.get("FEATX_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera")).resolve()
DEMO = REPO / "data" / "digits-demo"
# remembered lean-graph checks (featx.backbones.lean_graph) go to a folder of this test session, not ~/.cache
os.environ.setdefault("FEATX_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="featx-test-cache-"))

# a small, fast network for unit tests: random weights, 64 px input
TINY = dict(model="resnet18", weights="random", image_size=64, workers=0, batch_size=8, progress=False)


def needs_hymenoptera():
    return pytest.mark.skipif(not HYMENOPTERA.is_dir(),
                              reason=f"real data not found at {HYMENOPTERA} (../shared/datasets/hymenoptera)")


def make_class_folder(root: Path, classes=("cats", "dogs"), per_class=6, size=(48, 40), seed=0,
                      splits: tuple[str, ...] | None = None) -> Path:
    """Class folders of seeded images whose colour depends on the class (so they are separable)."""
    rng = np.random.default_rng(seed)
    for split in splits or (None,):
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.zeros((size[1], size[0], 3), np.float64)
                base[..., c % 3] = 180
                noise = rng.normal(0, 40, base.shape)
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i:02d}.png")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_class_folder(tmp_path / "images")


SYNTHETIC_CONFIG = {"backbone": "synthetic", "weights_id": "none", "weights_sha256": None, "layers": ["vec"],
                    "pool": "avg", "preprocess": {}, "tta": 1, "dtype": "float32"}


def make_feature_store(path: Path, X, labels, splits=None, config=None, shard_size=None, status="ok", groups=None):
    """A store holding given vectors (`X`, or {layer: vectors}), for tests of the steps after extraction.
    `groups` adds a 'group' column to the returned store's (in-memory) metadata, as a manifest's group column does."""

    from featx.io.sources import ImageRecord
    from featx.store import StoreWriter

    layers = {name: np.asarray(v, dtype=np.float32) for name, v in (X.items() if isinstance(X, dict) else
                                                                      [("vec", X)])}  # {layer: vectors}
    X = next(iter(layers.values()))
    splits = splits if splits is not None else [None] * len(X)
    records = [ImageRecord(f"/synthetic/{i:05d}.png", None if labels[i] is None else str(labels[i]), splits[i])
               for i in range(len(X))]
    writer = StoreWriter(path, config or dict(SYNTHETIC_CONFIG, layers=list(layers)))
    work = writer.prepare(records)
    step = shard_size or max(1, len(X))
    for start in range(0, len(X), step):
        stop = min(start + step, len(X))
        meta = work.plan.iloc[start:stop].copy()
        meta["sha256"] = [f"{i:064x}" for i in range(start, stop)]
        meta["status"] = status
        meta["error"] = None if status == "ok" else "synthetic failure"
        writer.commit_shard(start, {name: v[start:stop] for name, v in layers.items()}, meta)
    store = writer.finalize(len(X))
    if groups is not None:
        store.meta["group"] = list(groups)
    return store


def blobs(n_per_class=30, classes=3, dim=32, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 3, (classes, dim))
    X = np.concatenate([c + rng.normal(0, spread, (n_per_class, dim)) for c in centers])
    y = np.repeat([f"c{k}" for k in range(classes)], n_per_class)
    return X.astype(np.float32), y

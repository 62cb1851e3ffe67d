"""How well does `featx audit` find planted problems? (issue 14)

1. Label noise: flip 5% and 10% of the labels (seeded, to a random other class) of hymenoptera
   and of 1,000 Fashion-MNIST test images (100 per class, Debian's package; the
   demo set before it moved to scikit-learn's digits); precision and recall of the label-issue ranking at
   k = number flipped, and of cleanlab's flagged set; held-out accuracy (true labels) of the
   default train-shallow pipeline fitted on the noisy training rows, before and after dropping
   the flagged suspects (and with the true labels, for reference).
2. Leakage: 20 re-encoded copies of hymenoptera training images (downscaled to 70-100%, JPEG
   quality 70-95, another seed than the calibration's) planted in the val split: how many the
   audit flags as leakage. Also 20 harsh copies (50% size, quality 60), reported apart.
3. Outliers: 10 planted noise/blank images: how many are in the top 20 outlier scores.
4. Clean data: what the audit flags on the unmodified sets (an upper bound of its false-positive
   rate: real data has real problems).

Run: python benchmarks/audit.py [--cache /tmp/featx-audit-bench]. Extracts each store once
(efficientnet_lite0, CPU) and caches it; prints Markdown tables."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fashion_mnist  # benchmarks/fashion_mnist.py
import numpy as np
import pandas as pd
from PIL import Image

from featx.audit.audit import run_audit
from featx.audit.label_issues import out_of_sample_probabilities, rank_label_issues
from featx.extract.job import extract
from featx.io.decode import decode_image, read_bytes
from featx.learn.classify import build_pipeline
from featx.store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def cached_store(inputs, folder: Path) -> FeatureStore:
    if (folder / "manifest.json").is_file() and FeatureStore.open(folder).complete:
        return FeatureStore.open(folder)
    return extract(inputs, folder, workers=1)


def split_of(store: FeatureStore, seed: int) -> np.ndarray:
    """The store's train rows, or a seeded stratified 70% when it has no split."""
    splits = store.meta["split"].fillna("").to_numpy()
    if (splits == "train").any():
        return splits == "train"
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(store.meta))
    train_rows, _ = train_test_split(rows, train_size=0.7, stratify=store.labels.astype(str), random_state=seed)
    return np.isin(rows, train_rows)


def label_noise(name: str, store: FeatureStore, rate: float, seed: int) -> dict:
    X = np.asarray(store.features(), dtype=np.float32)
    y_true = store.labels.astype(str)
    train = split_of(store, seed)
    classes = np.unique(y_true)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(y_true), size=int(round(rate * len(y_true))), replace=False)
    y = y_true.copy()
    for i in flipped:
        y[i] = rng.choice(classes[classes != y_true[i]])
    start = time.perf_counter()
    ranked = rank_label_issues(y, out_of_sample_probabilities(X, y, train, seed=seed))
    seconds = time.perf_counter() - start
    order = ranked.sort_values("label_quality")["position"].to_numpy()
    k = len(flipped)
    top = set(order[:k].tolist())
    hits = len(top & set(flipped.tolist()))
    flagged = set(ranked.loc[ranked["label_issue"], "position"].tolist())
    flagged_hits = len(flagged & set(flipped.tolist()))

    def held_out_accuracy(keep: np.ndarray, labels: np.ndarray) -> float:
        fit_rows = np.flatnonzero(train & keep)
        pipeline = build_pipeline(n_samples=len(fit_rows), n_features=X.shape[1], smallest_class=2)
        pipeline.fit(X[fit_rows], labels[fit_rows])
        return float(np.mean(pipeline.predict(X[~train]) == y_true[~train]))

    keep = ~np.isin(np.arange(len(y)), list(flagged))
    return {"data": name, "noise": rate, "seed": seed, "flipped": k, "P=R@k": hits / k,
            "flagged": len(flagged), "flagged precision": flagged_hits / max(1, len(flagged)),
            "flagged recall": flagged_hits / k, "acc noisy": held_out_accuracy(np.ones(len(y), bool), y),
            "acc cleaned": held_out_accuracy(keep, y), "acc true labels": held_out_accuracy(np.ones(len(y), bool),
                                                                                            y_true),
            "dropped train rows": int(np.sum(train & ~keep)), "seconds": seconds}


def planted_store(cache: Path, seed: int = 7) -> tuple[FeatureStore, dict]:
    """hymenoptera + 20 moderate and 20 harsh re-encoded copies of train images in val, + 10 junk images."""
    folder = cache / "planted"
    info_file = folder / "planted.json"
    if (folder / "store" / "manifest.json").is_file() and info_file.is_file():
        return FeatureStore.open(folder / "store"), json.loads(info_file.read_text())
    rng = np.random.default_rng(seed)
    base = FeatureStore.open(cache / "hymenoptera")
    meta = base.meta
    train_rows = np.flatnonzero((meta["split"] == "train").to_numpy() & base.ok)
    chosen = rng.choice(train_rows, size=40, replace=False)
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    extra, info = [], {"moderate": {}, "harsh": {}, "junk": []}
    for n, row in enumerate(chosen):
        image = decode_image(read_bytes(meta["path"].iat[row])[0])
        harsh = n >= 20
        scale, quality = (0.5, 60) if harsh else (float(rng.uniform(0.7, 1.0)), int(rng.integers(70, 96)))
        copy = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        path = images / f"copy_{n:02d}.jpg"
        copy.save(path, "JPEG", quality=quality)
        extra.append({"path": str(path), "label": meta["label"].iat[row], "split": "val"})
        info["harsh" if harsh else "moderate"][str(path)] = meta["path"].iat[row]
    for n in range(10):  # 5 noise images, 5 blank frames of different grey/colour
        if n < 5:
            pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
        else:
            pixels = np.full((300, 400, 3), [(0, 0, 0), (255, 255, 255), (128, 128, 128), (30, 60, 200), (200, 40,
                                                                                                          40)][n - 5],
                             dtype=np.uint8)
        path = images / f"junk_{n:02d}.png"
        Image.fromarray(pixels).save(path)
        extra.append({"path": str(path), "label": str(rng.choice(["ants", "bees"])), "split": "train"})
        info["junk"].append(str(path))
    manifest = pd.concat([meta[["path", "label", "split"]], pd.DataFrame(extra)], ignore_index=True)
    manifest.to_csv(folder / "manifest.csv", index=False)
    store = extract(folder / "manifest.csv", folder / "store", workers=1)
    info_file.write_text(json.dumps(info, indent=1))
    return store, info


def planted_results(store: FeatureStore, info: dict) -> dict:
    start = time.perf_counter()
    result = run_audit(store, seed=0)
    seconds = time.perf_counter() - start
    leaks = result.suspects[result.suspects["kind"] == "leakage"]
    found = {p: n for p, n in zip(leaks["path"], leaks["neighbour_path"])}
    moderate = sum(1 for copy, original in info["moderate"].items() if found.get(copy) == original)
    harsh = sum(1 for copy, original in info["harsh"].items() if found.get(copy) == original)
    top20 = set(result.scores.sort_values("outlier_score", ascending=False)["path"].head(20))
    junk_flagged = set(result.suspects.loc[result.suspects["kind"] == "outlier", "path"])
    return {"moderate copies found": moderate, "harsh copies found": harsh,
            "other leakage flags": int(len(leaks) - moderate - harsh),
            "junk in top 20 outliers": sum(p in top20 for p in info["junk"]),
            "junk flagged as outliers": sum(p in junk_flagged for p in info["junk"]),
            "outliers flagged": int((result.suspects["kind"] == "outlier").sum()),
            "threshold": result.summary["near_duplicates"]["threshold"],
            "calibration": result.summary["near_duplicates"].get("copy_similarity"),
            "seconds": seconds}


def clean_results(name: str, store: FeatureStore) -> dict:
    start = time.perf_counter()
    result = run_audit(store, seed=0)
    summary = result.summary
    return {"data": name, "rows": summary["ok_rows"], **summary["counts"], "flagged rows": summary["flagged_rows"],
            "flagged fraction": summary["flagged_fraction"], "threshold": summary["near_duplicates"]["threshold"],
            "enough data": summary["enough_data"]["sentence"], "seconds": time.perf_counter() - start}


def markdown(frame: pd.DataFrame) -> str:
    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/featx-audit-bench"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--parts", default="noise,planted,clean", help="which parts to run (comma-separated)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    stores = {"hymenoptera": cached_store(HYMENOPTERA, args.cache / "hymenoptera"),
              # the first 100 images of each class of the test split: the set the README's figures were measured on
              "fashion-mnist-1000": cached_store(fashion_mnist.write_images(args.cache / "fashion-mnist-1000-images",
                                                                            {"test": 100}) / "test",
                                                 args.cache / "fashion-mnist-1000")}
    parts = args.parts.split(",")
    results = {"label_noise": []}
    for name, store in stores.items() if "noise" in parts else ():
        for rate in (0.05, 0.10):
            for seed in range(args.seeds):
                results["label_noise"].append(label_noise(name, store, rate, seed))
                print(json.dumps(results["label_noise"][-1]), flush=True)
    if results["label_noise"]:
        noise = pd.DataFrame(results["label_noise"])
        print("## Label noise (mean over seeds)\n")
        print(markdown(noise.drop(columns="seed").groupby(["data", "noise"]).mean().reset_index()))
    if "planted" in parts:
        planted, info = planted_store(args.cache)
        results["planted"] = planted_results(planted, info)
        print("\n## Planted copies and junk (hymenoptera)\n")
        print(json.dumps(results["planted"], indent=1), flush=True)
    if "clean" in parts:
        results["clean"] = [clean_results(name, store) for name, store in stores.items()]
        print("\n## Clean data\n")
        print(markdown(pd.DataFrame(results["clean"]).drop(columns="enough data")))
        for row in results["clean"]:
            print(f"- {row['data']}: {row['enough data']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()

"""Fit and cross-validation time and peak memory of each classifier, and of PCA and PQ, on
N × D seeded synthetic features (default 10,000 × 1,280, 10 classes, the shape of
EfficientNet-Lite0 features of a mid-sized dataset).

    python benchmarks/train_shallow.py [--n 10000] [--dim 1280] [--folds 5] [--only linear-svm,pca:64]

A case is a classifier (fixed strength, no tuning: one fit, then plain K-fold CV), a reducer before
linear-svm (`pca:64`), or `featx:CLASSIFIER` — the whole `featx.train_shallow` call as a user runs
it, with its defaults: strength tuned by inner CV inside each of the 5 outer folds, a final tuned
fit, validation and learning curves, report PNGs (`featx:default` is the default classifier).
`store:PATH` runs the same defaults on a real store's features (its train/val split if it has one,
else nested CV), e.g. the Fashion-MNIST store `benchmarks/accuracy.py` caches (10,000 train rows):

    python benchmarks/train_shallow.py --only store:runs/accuracy/fmnist-1000-all/store
For featx cases `fit s` is the whole call's wall-clock time, `CV s` is empty, and the CPU seconds
(user + system, all threads) are printed too: on a shared machine they show the work done, which the
wall clock does not.

Each case runs in a fresh process so its peak RSS is its own; `extra MB` is the peak minus the
process's RSS right after the data was made."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ["featx:default", "featx:linear-svm", "featx:logreg",
         "linear-svm", "logreg", "knn", "tree", "forest", "hgb", "rbf-svm", "pca:64", "pq:32"]

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score
from featx.learn.classify import build_pipeline
warnings.filterwarnings("ignore")
n, dim, folds, case = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
centers = rng.normal(0, 1, (10, dim)).astype(np.float32)
y = rng.integers(0, 10, n)
X = np.maximum(centers[y] + rng.normal(0, 2.0, (n, dim)).astype(np.float32), 0)  # ReLU-like, overlapping
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def timed_train_shallow(store, **options):  # the user's call: wall and CPU s (all threads), accuracy, peak; exits
    import featx
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    t = time.perf_counter(); model = featx.train_shallow(store, **options); fit_s = time.perf_counter() - t
    cpu_s = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"case": case, "fit_s": fit_s, "cv_s": float("nan"), "cv_accuracy": model.report["accuracy"],
                      "chosen": model.report["tuning"].get("chosen"), "cpu_s": cpu_s,
                      "extra_mb": (peak - baseline) / 1024, "peak_mb": peak / 1024}))
    sys.exit(0)


if case.startswith("store:"):  # real features: the defaults on a stored data set (its split, else nested CV)
    from featx.store import FeatureStore
    timed_train_shallow(FeatureStore.open(case.split(":", 1)[1]))
if case.startswith("featx:"):  # the user's call, defaults and all, on a store holding the features
    import atexit, shutil, tempfile
    from pathlib import Path
    from featx.io.sources import ImageRecord
    from featx.store import StoreWriter
    config = {"backbone": "synthetic", "weights_id": "none", "weights_sha256": None, "layers": ["vec"],
              "pool": "avg", "preprocess": {}, "tta": 1, "dtype": "float32"}
    tmp = tempfile.mkdtemp()
    atexit.register(shutil.rmtree, tmp, True)  # the child exits inside timed_train_shallow
    writer = StoreWriter(Path(tmp) / "store", config)
    work = writer.prepare([ImageRecord(f"/synthetic/{i:05d}.png", f"c{y[i]}", None) for i in range(n)])
    meta = work.plan.copy()
    meta["sha256"], meta["status"], meta["error"] = [f"{i:064x}" for i in range(n)], "ok", None
    writer.commit_shard(0, {"vec": X}, meta)
    name = case.split(":", 1)[1]
    timed_train_shallow(writer.finalize(n), cv=folds, **({} if name == "default" else {"classifier": name}))
classifier, reduce = (case, "none") if ":" not in case else ("linear-svm", case)
make = lambda: build_pipeline(classifier=classifier, reduce=reduce, n_samples=n, n_features=dim, smallest_class=n // 20)
t = time.perf_counter(); make().fit(X, y); fit_s = time.perf_counter() - t
t = time.perf_counter()
scores = cross_val_score(make(), X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=0))
cv_s = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"case": case, "fit_s": fit_s, "cv_s": cv_s, "cv_accuracy": float(np.mean(scores)),
                  "extra_mb": (peak - baseline) / 1024, "peak_mb": peak / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default=",".join(CASES))
    args = parser.parse_args()
    print(f"{args.n} x {args.dim} features, 10 classes, {args.folds}-fold CV (case = classifier, or reducer + "
          f"linear-svm)")
    print(f"{'case':<18}{'fit s':>9}{'CV s':>9}{'CV acc':>8}{'extra MB':>10}{'peak MB':>9}")
    for case in args.only.split(","):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.n), str(args.dim), str(args.folds), case],
                             cwd=REPO, capture_output=True, text=True)
        if out.returncode:
            print(f"{case:<18} failed: {out.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:<18}{r['fit_s']:>9.1f}{r['cv_s']:>9.1f}{r['cv_accuracy']:>8.3f}{r['extra_mb']:>10.0f}{r['peak_mb']:>9.0f}"
              + (f"   chosen {r['chosen']:g}, CPU s {r['cpu_s']:.1f}" if r.get("chosen") is not None else ""),
              flush=True)


if __name__ == "__main__":
    main()

"""UMAP and t-SNE time and peak memory for 10,000 and 70,000 vectors.

    python benchmarks/projection.py [--sizes 10000,70000] [--methods umap,tsne]

Vectors: Fashion-MNIST images (784 raw pixels; `apt-get install dataset-fashion-mnist`), or
seeded synthetic clusters when that package is absent. Each case runs `featx.project` (PCA to 50
dimensions first, as the CLI does) in a fresh process, so peak RSS is its own. The time includes
the quality numbers (trustworthiness and kNN accuracy on a 2,000-point sample)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import fashion_mnist  # benchmarks/fashion_mnist.py
import numpy as np

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time, warnings
warnings.filterwarnings("ignore")
from featx.maps.project import project
t = time.perf_counter()
coords = project(sys.argv[1], method=sys.argv[2], seed=0)
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "quality": coords.attrs["quality"]}))
"""


def load_vectors(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if fashion_mnist.available():
        (train, train_y), (test, test_y) = fashion_mnist.load("train"), fashion_mnist.load("test")
        X, y = np.concatenate([train, test]).reshape(-1, 784), np.concatenate([train_y, test_y])
        return X[:n].astype(np.float32) / 255, y[:n].astype(str), "Fashion-MNIST pixels (784-d)"
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 4, (10, 256))
    y = rng.integers(0, 10, n)
    return (centers[y] + rng.normal(0, 1, (n, 256))).astype(np.float32), y.astype(str), "synthetic clusters (256-d)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,70000")
    parser.add_argument("--methods", default="umap,tsne")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import make_feature_store

    print(f"{'method':<7}{'points':>9}{'seconds':>10}{'peak MB':>10}{'trust.':>8}{'kNN map':>9}{'kNN orig':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            X, y, source = load_vectors(n)
            store = make_feature_store(Path(tmp) / f"s{n}", X, list(y))
            for method in args.methods.split(","):
                out = subprocess.run([sys.executable, "-c", CHILD, str(store.path), method], cwd=REPO,
                                     capture_output=True, text=True)
                if out.returncode:
                    print(f"{method:<7}{n:>9} failed: {out.stderr.strip().splitlines()[-1]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                q = r["quality"]
                print(f"{method:<7}{n:>9}{r['seconds']:>10.1f}{r['peak_mb']:>10.0f}{q['trustworthiness']:>8.3f}"
                      f"{q.get('knn_accuracy_map', float('nan')):>9.3f}{q.get('knn_accuracy_original', float('nan')):>9.3f}",
                      flush=True)
        print(f"data: {source}")


if __name__ == "__main__":
    main()

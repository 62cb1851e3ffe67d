"""Extraction throughput: featx end-to-end (JPEG files -> feature store) against the ceiling,
a pure forward pass of the same tapped network on random tensors, measured side by side.

    python benchmarks/extract_throughput.py [--models efficientnet_lite0,...] [--images 800]
                                            [--rss] [--device cpu|cuda] [--amp none|bf16]

Prints one row per model: ceiling img/s, end-to-end img/s and their ratio; with --rss, the peak
RSS of a whole extraction of 400 and 4,000 images (streaming: it should not grow)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HYMENOPTERA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def repeated_jpegs(folder: Path, count: int) -> Path:
    """`count` JPEG files made of the hymenoptera photos, linked under distinct names."""
    sources = sorted(HYMENOPTERA.rglob("*.jpg"))
    if not sources:
        sys.exit(f"no JPEG files under {HYMENOPTERA}; this benchmark needs ../shared/datasets/hymenoptera")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"{i:06d}.jpg"
        if not link.exists():
            link.symlink_to(sources[i % len(sources)])
    return folder


def forward_ceiling(extractor, batch_size: int, seconds: float = 8.0) -> float:
    size = extractor.backbone.preprocess.crop_size
    x = torch.randint(0, 255, (batch_size, 3, size, size), dtype=torch.uint8)
    extractor._forward(x)  # warm-up
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        extractor._forward(x)
        done += batch_size
    if extractor.device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - start)


def end_to_end(extractor, folder: Path) -> float:
    from featx.images import scan_inputs

    paths = [r.path for r in scan_inputs(folder)]
    warm = list(extractor.run(paths[: extractor.batch_size], progress=False))  # start-up is not throughput
    del warm
    start = time.perf_counter()
    rows = sum(len(b.indices) for b in extractor.run(paths, progress=False))
    return rows / (time.perf_counter() - start)


def peak_rss_mb(folder: Path, model: str, weights: str) -> float:
    code = (
        "import resource, tempfile, json; from featx.extract import extract\n"
        f"extract({str(folder)!r}, tempfile.mkdtemp(), model={model!r}, weights={weights!r}, progress=False)\n"
        "self=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; kids=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([self, kids]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    main, workers = json.loads(out.stdout.strip().splitlines()[-1])
    return (main + workers) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,mobilenet_v3_large,resnet50")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="none")
    parser.add_argument("--decode", default="auto", help="auto|pil|torch (torch = nvJPEG on CUDA)")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS at 400 and 4,000 images")
    args = parser.parse_args()

    from featx.extract import Extractor

    tmp = Path(tempfile.mkdtemp(prefix="featx-bench-"))
    folder = repeated_jpegs(tmp / "jpegs", args.images)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.images} JPEGs, batch {args.batch_size}")
    print(f"{'model':<22}{'ceiling img/s':>15}{'featx img/s':>13}{'ratio':>8}")
    for model in args.models.split(","):
        weights = "default" if model == "efficientnet_lite0" else "random"  # speed does not depend on weights
        extractor = Extractor(model, weights=weights, batch_size=args.batch_size, workers=args.workers,
                              device=args.device, amp=args.amp, decode=args.decode)
        ceiling = forward_ceiling(extractor, args.batch_size)
        featx = end_to_end(extractor, folder)
        print(f"{model:<22}{ceiling:>15.1f}{featx:>13.1f}{featx / ceiling:>8.2f}", flush=True)
    if args.rss:
        for count in (400, 4000):
            rss = peak_rss_mb(repeated_jpegs(tmp / f"rss{count}", count), "efficientnet_lite0", "default")
            print(f"peak RSS, efficientnet_lite0, {count:>5} images: {rss:,.0f} MB (main + largest worker)", flush=True)


if __name__ == "__main__":
    main()

"""Optional faster CPU modes, measured side by side in one run: speed of the forward pass and
hymenoptera accuracy of featx's default classifier on the features each mode gives.

    python benchmarks/cpu_modes.py                      # efficientnet_lite0 (real weights)
    python benchmarks/cpu_modes.py --modes float32,bf16,compile,int8 --rounds 5

Modes (all on featx's lean tapped network, channels_last, same input, same threads):
  float32   featx's default
  bf16      torch.autocast("cpu", bfloat16) — `featx extract --amp bf16` (CPUs with AVX512-BF16/AMX)
  compile   torch.compile(tap) (Inductor, needs a C++ compiler); compile time reported apart
  int8      static int8 (torch.ao FX graph mode: prepare_fx, calibration on 64 training images,
            convert_fx, x86 backend); dynamic int8 quantises Linear layers only, and the tapped
            network has none, so it is not a separate mode
Accuracy: the images are decoded once; every mode's features of train/ fit featx's default
pipeline (tuned linear SVM, z-scored), scored on val/. A mode is worth keeping when it is faster
than float32 and within 1 accuracy point of it."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def decoded(extractor, folder: Path) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    from featx.extract.extractor import ImageViews

    paths = sorted(folder.rglob("*.jpg"))
    dataset = ImageViews([str(p) for p in paths], extractor.backbone.preprocess, 1, "pil")
    views = torch.cat([dataset[i]["views"] for i in range(len(paths))])
    labels = np.array([p.parent.name for p in paths])
    splits = np.array([p.parent.parent.name for p in paths])
    return views, labels, splits


def features(extractor, forward, views: torch.Tensor, batch: int) -> np.ndarray:
    from featx.backbones.pooling import pool
    from featx.preprocess.views import normalise

    layer = extractor.layers[0]
    out = []
    with torch.inference_mode():
        for i in range(0, len(views), batch):
            x = normalise(views[i:i + batch].contiguous(memory_format=torch.channels_last),
                          extractor.backbone.preprocess)
            out.append(pool(forward(x)[layer], extractor.pool_name, extractor.layer_formats[layer]).float().numpy())
    return np.concatenate(out)


def accuracy(X: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> float:
    from featx.learn.classify import build_pipeline

    train, val = splits == "train", splits == "val"
    pipeline = build_pipeline(n_samples=int(train.sum()), n_features=X.shape[1],
                              smallest_class=int(min(np.unique(labels[train], return_counts=True)[1])), tuned=True)
    pipeline.fit(X[train], labels[train])
    return float((pipeline.predict(X[val]) == labels[val]).mean())


def make_modes(extractor, names: list[str], calibration: torch.Tensor) -> dict:
    tap = extractor.tap
    modes = {}
    for name in names:
        start = time.perf_counter()
        try:
            if name == "float32":
                forward = tap
            elif name == "bf16":
                def forward(x, tap=tap):
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        return tap(x)
            elif name == "compile":
                compiled = torch.compile(tap)
                with torch.inference_mode():
                    compiled(calibration[:32])  # compiles for this batch shape
                forward = compiled
            elif name == "int8":
                from torch.ao.quantization import get_default_qconfig_mapping
                from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
                from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

                graph = tap.traced
                # modules the feature extractor kept as leaves (timm's Conv2dSame pads by input size:
                # control flow the quantisation tracer cannot follow) stay float
                modules = dict(graph.named_modules())
                leaves = {type(modules[n.target]) for n in graph.graph.nodes if n.op == "call_module"
                          and not type(modules[n.target]).__module__.startswith("torch.nn")}
                custom = PrepareCustomConfig().set_non_traceable_module_classes(list(leaves))
                prepared = prepare_fx(graph, get_default_qconfig_mapping("x86"), example_inputs=(calibration[:1],),
                                      prepare_custom_config=custom)
                with torch.inference_mode():
                    for i in range(0, len(calibration), 16):
                        prepared(calibration[i:i + 16])
                forward = convert_fx(prepared)
            else:
                raise ValueError(f"unknown mode {name}")
            modes[name] = (forward, time.perf_counter() - start)
        except Exception as exc:  # a mode this machine or model cannot run is reported, not fatal
            print(f"{name}: not available ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", flush=True)
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--weights", default="default")
    parser.add_argument("--modes", default="float32,bf16,compile,int8")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per mode and round")
    parser.add_argument("--data", type=Path, default=None, help="hymenoptera folder (train/, val/)")
    args = parser.parse_args()
    from extract_throughput import HYMENOPTERA

    from featx.extract.extractor import Extractor
    from featx.runtime import usable_cores

    data = args.data or HYMENOPTERA
    torch.set_num_threads(usable_cores())
    extractor = Extractor(args.model, weights=args.weights, device="cpu", batch_size=args.batch_size)
    views, labels, splits = decoded(extractor, data)
    from featx.preprocess.views import normalise

    calibration = normalise(views[splits == "train"][:64].contiguous(memory_format=torch.channels_last),
                            extractor.backbone.preprocess)
    modes = make_modes(extractor, args.modes.split(","), calibration)
    x = calibration[:args.batch_size].contiguous(memory_format=torch.channels_last)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    with torch.inference_mode():
        for forward, _ in modes.values():
            forward(x)  # warm-up
        for _ in range(args.rounds):  # interleaved rounds: a busy machine slows every mode alike
            for name, (forward, _) in modes.items():
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    forward(x)
                    done += len(x)
                rates[name].append(done / (time.perf_counter() - start))
    print(f"{args.model}, torch {torch.__version__}, {usable_cores()} threads, batch {args.batch_size}, "
          f"{args.rounds} interleaved rounds; accuracy: featx default classifier, hymenoptera train -> val "
          f"({int((splits == 'val').sum())} images)")
    reference = features(extractor, modes["float32"][0], views, args.batch_size) if "float32" in modes else None
    base_rate = statistics.median(rates["float32"]) if "float32" in modes else float("nan")
    base_accuracy = accuracy(reference, labels, splits) if reference is not None else float("nan")
    print(f"{'mode':<9}{'img/s':>8}{'speed':>7}{'setup s':>9}{'accuracy':>10}{'points':>8}{'min cos':>9}")
    for name, (forward, setup) in modes.items():
        X = reference if name == "float32" else features(extractor, forward, views, args.batch_size)
        score = accuracy(X, labels, splits)
        cosine = (float(np.min((X * reference).sum(1) / np.linalg.norm(X, axis=1) / np.linalg.norm(reference, axis=1)))
                  if reference is not None else float("nan"))
        rate = statistics.median(rates[name])
        print(f"{name:<9}{rate:>8.1f}{rate / base_rate:>7.2f}{setup:>9.1f}{score:>10.3f}"
              f"{100 * (score - base_accuracy):>+8.1f}{cosine:>9.4f}", flush=True)


if __name__ == "__main__":
    main()

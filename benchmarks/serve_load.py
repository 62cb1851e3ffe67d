"""Bounded loopback load on `featx serve`: 1, 8 and 32 concurrent clients, a fixed number of
requests each (one image per request, POST /v1/predict); stops by itself.

Reports req/s, p50/p95/p99 latency, mean batch size (from /metrics) and the server's RSS at start
and end, next to the offline baselines measured in the same run with the same model: `featx
extract` throughput (img/s) and one image's decode + forward.

`--paired N` times N single requests each right after the same image's offline decode + forward
(alternating, so both see the same machine load): the median of the per-pair ratios is the
1-client target measured side by side, robust to a shared machine's swings.

`--soak N` adds a leg of N more requests (at `--soak-clients` clients) with the server's RSS
sampled ten times along it: flat RSS over 10,000 requests is one of the service's targets.

    python benchmarks/serve_load.py --images ../shared/datasets/hymenoptera/val --requests 20
    python benchmarks/serve_load.py --model runs/demo/model --images data/digits-demo
    python benchmarks/serve_load.py --model MODEL_DIR --images IMAGES --clients 1 --soak 10000

Without --model it first builds one (default backbone, logreg) from --images in a temp folder."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_until_ready(base: str, server: subprocess.Popen, timeout: float = 300) -> None:
    """Poll /readyz until the service answers 200; exit with its stderr if it dies or never does."""
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch_totals(metrics: str) -> tuple[float, float]:
    total = float(re.search(r"^featx_batch_images_sum ([\d.e+]+)$", metrics, re.M).group(1))
    count = float(re.search(r"^featx_batch_images_count ([\d.e+]+)$", metrics, re.M).group(1))
    return total, count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def run_level(base: str, blobs: list[tuple[str, bytes]], clients: int, requests: int) -> dict:
    import httpx

    latencies, errors = [], 0
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=clients)) as http:
        before = batch_totals((await http.get("/metrics")).text)

        async def client(c: int):
            nonlocal errors
            for j in range(requests):
                name, data = blobs[(c * requests + j) % len(blobs)]
                start = time.perf_counter()
                response = await http.post("/v1/predict", files=[("files", (name, data, "image/jpeg"))])
                latencies.append(time.perf_counter() - start)
                errors += response.status_code != 200

        start = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
        after = batch_totals((await http.get("/metrics")).text)
    batches = after[1] - before[1]
    return {"clients": clients, "requests": clients * requests, "errors": errors,
            "req_per_s": clients * requests / wall, "p50_ms": 1000 * percentile(latencies, 50),
            "p95_ms": 1000 * percentile(latencies, 95), "p99_ms": 1000 * percentile(latencies, 99),
            "mean_batch": (after[0] - before[0]) / batches if batches else float("nan")}


def run_soak(base: str, blobs: list[tuple[str, bytes]], pid: int, total: int, clients: int) -> dict:
    """`total` requests in ten chunks, the server's RSS after each (and before the first)."""
    per_client = max(1, total // (10 * clients))
    rss, legs = [rss_mb(pid)], []
    for _ in range(10):
        legs.append(asyncio.run(run_level(base, blobs, clients, per_client)))
        rss.append(rss_mb(pid))
        print(f"  soak: {sum(leg['requests'] for leg in legs)} requests, RSS {rss[-1]:.0f} MB", file=sys.stderr,
              flush=True)
    requests = sum(leg["requests"] for leg in legs)
    return {"requests": requests, "clients": clients, "errors": sum(leg["errors"] for leg in legs),
            "req_per_s": requests / sum(leg["requests"] / leg["req_per_s"] for leg in legs), "rss_mb": rss}


def paired_single(base: str, model_dir: Path, paths: list[str], n: int) -> dict:
    """Offline decode + forward of an image, then the same image as one POST /v1/predict, n times."""
    import httpx

    from featx.extract.extractor import extractor_from_config
    from featx.io.decode import decode_image, read_bytes
    from featx.learn.model import ShallowModel
    from featx.preprocess.views import image_views

    model = ShallowModel.load(model_dir)
    extractor = extractor_from_config(dict(model.extractor_config, layers=[model.layer]), device="cpu")
    offline, served = [], []
    with httpx.Client(base_url=base, timeout=120) as http:
        for i in range(n):
            path = paths[i % len(paths)]
            data = Path(path).read_bytes()
            start = time.perf_counter()
            views = image_views(decode_image(read_bytes(path)[0], extractor.backbone.preprocess.resize_size),
                                extractor.backbone.preprocess, extractor.tta)
            extractor.forward(views)
            offline.append(time.perf_counter() - start)
            time.sleep(0.01)  # torch's OpenMP workers spin ~ms after a pass: let this process's settle first
            start = time.perf_counter()
            response = http.post("/v1/predict", files=[("files", (Path(path).name, data, "image/jpeg"))])
            served.append(time.perf_counter() - start)
            response.raise_for_status()
            time.sleep(0.01)  # ... and the server's, before the next offline pass
    ratios = [s / o for s, o in zip(served, offline)]
    return {"pairs": n, "offline_ms": 1000 * statistics.median(offline), "served_ms": 1000 * statistics.median(served),
            "ratio_median": statistics.median(ratios), "ratio_p25": percentile(ratios, 25),
            "ratio_p75": percentile(ratios, 75)}


def offline_baselines(model_dir: Path, paths: list[str]) -> dict:
    """`featx extract`'s img/s with the model's own extractor, and one image's decode + forward."""
    from featx.extract.extractor import extractor_from_config
    from featx.io.decode import decode_image, read_bytes
    from featx.learn.model import ShallowModel
    from featx.preprocess.views import image_views

    model = ShallowModel.load(model_dir)
    extractor = extractor_from_config(dict(model.extractor_config, layers=[model.layer]), device="cpu")
    extractor.features_of(paths[:8])  # warm-up
    start = time.perf_counter()
    extractor.features_of(paths)
    throughput = len(paths) / (time.perf_counter() - start)
    single = []
    for path in paths[:20]:
        start = time.perf_counter()
        views = image_views(decode_image(read_bytes(path)[0], extractor.backbone.preprocess.resize_size),
                            extractor.backbone.preprocess, extractor.tta)
        extractor.forward(views)
        single.append(time.perf_counter() - start)
    return {"extract_img_per_s": throughput, "single_decode_forward_ms": 1000 * statistics.median(single)}


def build_model(images: Path, folder: Path) -> Path:
    from featx.extract.job import extract
    from featx.learn.classify import train_shallow

    store = extract(images, folder / "store", device="cpu", progress=False)
    train_shallow(store, classifier="logreg", out=folder / "model", learning_curve=False)
    return folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="folder of query images (also the training set "
                                                                     "when --model is not given)")
    parser.add_argument("--model", type=Path, help="a featx model folder; default: built from --images")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=20, help="requests per client at each level")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, help="torch threads for the baselines and the server (OMP_NUM_THREADS); "
                                                     "on a shared, oversubscribed machine 1 is fairer")
    parser.add_argument("--work", type=Path, help="keep the model built from --images here (reused next time)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment of the server process only (repeatable), e.g. MALLOC_ARENA_MAX=1")
    parser.add_argument("--paired", type=int, default=0, help="N alternating offline / served single requests")
    parser.add_argument("--soak", type=int, default=0, help="then N more requests, RSS sampled 10 times (e.g. 10000)")
    parser.add_argument("--soak-clients", type=int, default=8)
    args = parser.parse_args()

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from featx.io.sources import scan_inputs

    paths = [r.path for r in scan_inputs(args.images)]
    blobs = [(Path(p).name, Path(p).read_bytes()) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        model = args.model or (work / "model" if (work / "model" / "model.json").is_file()
                               else build_model(args.images, work))
        baselines = offline_baselines(model, paths)  # measured again after the load: the machine may be shared
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "featx.cli", "serve", "--model", f"m={model}", "--port",
                                   str(port), "--device", "cpu", "--max-batch", str(args.max_batch),
                                   "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "4096"],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                 **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}),
                                                 **dict(item.split("=", 1) for item in args.server_env)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:

            wait_until_ready(base, server)
            asyncio.run(run_level(base, blobs[:4], 1, 3))  # warm-up
            rss_start = rss_mb(server.pid)
            levels = []
            for clients in args.clients.split(","):  # repeat a level (e.g. 1,8,32,32,32) to see RSS settle
                levels.append(asyncio.run(run_level(base, blobs, int(clients), args.requests)))
                levels[-1]["rss_mb"] = rss_mb(server.pid)
            rss_end = rss_mb(server.pid)
            paired = paired_single(base, model, paths, args.paired) if args.paired else None
            soak = run_soak(base, blobs, server.pid, args.soak, args.soak_clients) if args.soak else None
            after = offline_baselines(model, paths)
            baselines = {k: [baselines[k], after[k]] for k in baselines}
        finally:
            server.send_signal(signal.SIGINT)
            server.wait(30)
    results = {"baselines": baselines, "levels": levels, "rss_mb_start": rss_start, "rss_mb_end": rss_end,
               "soak": soak, "paired": paired,
               "requests_total": sum(level["requests"] for level in levels), "cpu_cores": os.cpu_count(),
               "torch_threads": args.threads, "load_average": os.getloadavg()}
    print(f"offline (before / after the load): extract {baselines['extract_img_per_s'][0]:.1f} / "
          f"{baselines['extract_img_per_s'][1]:.1f} img/s; one image decode+forward "
          f"{baselines['single_decode_forward_ms'][0]:.1f} / {baselines['single_decode_forward_ms'][1]:.1f} ms")
    extract_rate = sum(baselines["extract_img_per_s"]) / 2
    single_ms = sum(baselines["single_decode_forward_ms"]) / 2
    print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'batch':>6} {'RSS MB':>7}  vs target")
    for level in levels:
        note = ""
        if level["clients"] == 1:
            note = f"p50 / single = {level['p50_ms'] / single_ms:.2f} (target <= 1.5)"
        elif level["clients"] >= 32:
            note = f"req/s / extract = {level['req_per_s'] / extract_rate:.2f} (target >= 0.8)"
        print(f"{level['clients']:>7} {level['requests']:>8} {level['errors']:>6} {level['req_per_s']:>8.1f} "
              f"{level['p50_ms']:>8.1f} {level['p95_ms']:>8.1f} {level['p99_ms']:>8.1f} {level['mean_batch']:>6.1f} "
              f"{level['rss_mb']:>7.0f}  {note}")
    print(f"server RSS: {rss_start:.0f} MB at start, {rss_end:.0f} MB after {results['requests_total']} requests; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if paired:
        print(f"paired (offline decode+forward, then the same image served, {paired['pairs']} times): offline "
              f"{paired['offline_ms']:.1f} ms, served p50 {paired['served_ms']:.1f} ms; per-pair ratio median "
              f"{paired['ratio_median']:.2f} (quartiles {paired['ratio_p25']:.2f}-{paired['ratio_p75']:.2f}; target "
              f"<= 1.5)")
    if soak:
        points = soak["rss_mb"]
        print(f"soak: {soak['requests']} requests at {soak['clients']} clients, {soak['errors']} errors, "
              f"{soak['req_per_s']:.1f} req/s; server RSS (MB) after every {soak['requests'] // len(points[1:])}: "
              + " ".join(f"{v:.0f}" for v in points)
              + f"; first to last {points[-1] - points[0]:+.1f} MB, second half {points[-1] - points[len(points) // 2]:+.1f} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""How well `featx serve --projection` places uploaded images on a saved map.

Starts `featx serve --projection m=MAP_DIR` on loopback, uploads N of the map's own images (seeded
sample) to POST /v1/place as new files (so the fitted reducer places them; nothing is looked up),
and compares each placed point with the image's own point on the map:

- distance to its own point, in units of the map's median nearest-neighbour distance;
- rank of its own point among the map points nearest to where it landed (1 = nearest);
- whether the majority label of the 10 map points nearest to it is the image's label.

    python benchmarks/serve_place.py --projection runs/tour/map -n 40"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from serve_load import free_port, wait_until_ready  # benchmarks/serve_load.py

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--projection", type=Path, required=True)
    parser.add_argument("-n", type=int, default=40, help="images to place")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import httpx

    coords = pd.read_parquet(args.projection / "coords.parquet")
    xy = coords[["x", "y"]].to_numpy(np.float64)
    labels = coords["label"].astype(str).to_numpy()
    chosen = np.random.default_rng(args.seed).choice(len(coords), size=min(args.n, len(coords)), replace=False)
    gaps = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=2), axis=1)[:, 1]
    unit = float(np.median(gaps))  # the map's median nearest-neighbour distance

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "featx.cli", "serve", "--projection", f"m={args.projection}",
                               "--port", str(port), "--device", "cpu"], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    rows, latencies = [], []
    try:
        wait_until_ready(base, server)
        with httpx.Client(base_url=base, timeout=120) as http:
            for i in chosen:
                data = Path(coords["path"].iat[i]).read_bytes()
                start = time.perf_counter()
                answer = http.post("/v1/place", files=[("files", ("query.jpg", data, "image/jpeg"))])
                latencies.append(time.perf_counter() - start)
                answer.raise_for_status()
                result = answer.json()["results"][0]
                assert result["how"] == "transform"
                placed = np.asarray(result["coords"][:2])
                distances = np.linalg.norm(xy - placed, axis=1)
                order = np.argsort(distances)
                vote = Counter(labels[order[:10]]).most_common(1)[0][0]
                rows.append({"row_id": int(coords["row_id"].iat[i]), "distance": float(distances[i]) / unit,
                             "own_rank": int(np.flatnonzero(order == i)[0]) + 1, "vote_ok": vote == labels[i]})
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
    record = json.loads((args.projection / "projection.json").read_text())["info"]
    frame = pd.DataFrame(rows)
    summary = {"method": record["method"], "points": len(coords), "placed": len(frame),
               "median_distance_in_nn_units": float(frame["distance"].median()),
               "own_point_in_top10": float((frame["own_rank"] <= 10).mean()),
               "median_own_rank": float(frame["own_rank"].median()),
               "label_vote_agrees": float(frame["vote_ok"].mean()),
               "place_ms_p50": 1000 * statistics.median(latencies)}
    print(f"{summary['method']} map of {summary['points']} images; {summary['placed']} of them uploaded and placed:")
    print(f"  landed a median {summary['median_distance_in_nn_units']:.2f} nearest-neighbour distances from their "
          f"own point; own point among the 10 nearest {100 * summary['own_point_in_top10']:.0f}% "
          f"(median rank {summary['median_own_rank']:.0f})")
    print(f"  10-nearest label vote = own label: {100 * summary['label_vote_agrees']:.0f}%; "
          f"POST /v1/place p50 {summary['place_ms_p50']:.0f} ms (decode + forward + placement)")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

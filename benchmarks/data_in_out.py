"""Data in and out (docs/data.md), measured side by side in one run:

  inputs  Fashion-MNIST images as PNG files, as 10 WebDataset tar shards and as one Parquet file of
          Hugging Face {bytes, path} structs: extraction throughput of each, the vectors compared
          image by image, and a `featx extract` from the shards killed with SIGKILL, resumed and
          compared with the clean store.
  speed   the same images from files, shards and Parquet in interleaved rounds (files, shards,
          parquet, files, …), best round of each: the throughput ratios with the machine's load
          spread over all three.
  export  a 20,000-row store exported to Parquet and queried by DuckDB, joined with a label table.
  onnx    hymenoptera: `featx export MODEL -o model.onnx`, then onnxruntime (CPU) against
          `featx predict` on the val photos: labels, scores, images per second.

    python benchmarks/data_in_out.py inputs --images 5000
    python benchmarks/data_in_out.py speed --images 1000 --rounds 3
    python benchmarks/data_in_out.py export --rows 20000
    python benchmarks/data_in_out.py onnx
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import fashion_mnist  # noqa: E402

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "hymenoptera"


def fashion_pngs(n: int) -> list[tuple[str, bytes]]:
    """(class name, PNG bytes) of the first `n` images (test, then train), classes interleaved."""
    from PIL import Image

    images, labels = fashion_mnist.load("test")
    if n > len(images):
        more, more_labels = fashion_mnist.load("train")
        images, labels = np.concatenate([images, more]), np.concatenate([labels, more_labels])
    out = []
    for image, label in zip(images[:n], labels[:n]):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        out.append((fashion_mnist.CLASSES[int(label)], buffer.getvalue()))
    return out


def write_sources(pngs: list[tuple[str, bytes]], root: Path, shards: int) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = root / "files"
    for i, (label, data) in enumerate(pngs):
        (files / label).mkdir(parents=True, exist_ok=True)
        (files / label / f"{i:06d}.png").write_bytes(data)
    (root / "shards").mkdir()
    per_shard = -(-len(pngs) // shards)
    for s in range(shards):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for i in range(s * per_shard, min(len(pngs), (s + 1) * per_shard)):
                for name, data in ((f"{i:06d}.png", pngs[i][1]), (f"{i:06d}.cls", pngs[i][0].encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    table = pa.table({"image": pa.array([{"bytes": d, "path": f"{i:06d}.png"} for i, (_, d) in enumerate(pngs)]),
                      "label": [label for label, _ in pngs]})
    pq.write_table(table, root / "data.parquet", row_group_size=1000)
    return {"files": str(files), "shards": str(root / "shards" / f"{{00000..{shards - 1:05d}}}.tar"),
            "parquet": str(root / "data.parquet")}


def by_sha(store) -> dict[str, bytes]:
    ok = store.ok
    return dict(zip(store.meta["sha256"][ok], (v.tobytes() for v in store.features()[ok])))


def inputs(args) -> None:
    from featx.extract.job import extract
    from featx.store import FeatureStore

    root = Path(tempfile.mkdtemp(prefix="featx-data-in-"))
    sources = write_sources(fashion_pngs(args.images), root, args.shards)
    times, stores = {}, {}
    for name in ("files", "shards", "parquet"):
        start = time.perf_counter()
        stores[name] = extract(sources[name], root / f"store-{name}", batch_size=args.batch_size, progress=False)
        times[name] = time.perf_counter() - start
    reference = by_sha(stores["files"])
    print(f"{args.images} Fashion-MNIST images, {args.shards} shards, default extractor, one run:")
    for name in ("files", "shards", "parquet"):
        vectors = by_sha(stores[name])
        same = sum(vectors.get(sha) == vector for sha, vector in reference.items())
        print(f"  {name:8s} {times[name]:7.1f} s  {args.images / times[name]:6.1f} img/s  "
              f"ratio to files {times['files'] / times[name]:.2f}x  rows {len(stores[name])}  "
              f"vectors identical to files: {same}/{len(reference)}")
    # kill -9 while extracting from the shards, then resume with the same command
    out = root / "store-killed"
    command = [sys.executable, "-m", "featx.cli", "extract", sources["shards"], "-o", str(out),
               "--batch-size", str(args.batch_size), "--shard-size", "500"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while not (out / "commits.jsonl").is_file() or len((out / "commits.jsonl").read_text().splitlines()) < 2:
        time.sleep(0.2)
        if process.poll() is not None:
            break
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    partial = FeatureStore.open(out)
    print(f"  killed with SIGKILL after {len(partial.manifest['shards'])} committed shards "
          f"({len(partial) - sum(b - a for a, b in partial.missing_ranges())} of {len(partial)} rows)")
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed, clean = FeatureStore.open(out), stores["shards"]
    same_meta = resumed.meta[["path", "label", "sha256", "status"]].equals(clean.meta[["path", "label", "sha256",
                                                                                        "status"]])
    print(f"  resumed: metadata equal to the clean store: {same_meta}; vectors equal byte for byte: "
          f"{resumed.features().tobytes() == clean.features().tobytes()}")


def speed(args) -> None:
    from featx.extract.job import extract

    root = Path(tempfile.mkdtemp(prefix="featx-data-speed-"))
    sources = write_sources(fashion_pngs(args.images), root, args.shards)
    times: dict[str, list[float]] = {}
    for round_ in range(args.rounds):
        for name in ("files", "shards", "parquet"):
            start = time.perf_counter()
            extract(sources[name], root / f"store-{name}-{round_}", batch_size=args.batch_size, progress=False)
            times.setdefault(name, []).append(time.perf_counter() - start)
    print(f"{args.images} Fashion-MNIST images, {args.shards} shards, default extractor, "
          f"{args.rounds} interleaved rounds, best of each:")
    for name, values in times.items():
        print(f"  {name:8s} best {min(values):6.1f} s  {args.images / min(values):6.1f} img/s  throughput vs files "
              f"{min(times['files']) / min(values):.2f}x  (rounds: {', '.join(f'{v:.1f}' for v in values)})")
    # the reading alone (bytes and sha256 of every image, as the extractor's reader gets them), best of 5
    from featx.io.decode import read_bytes
    from featx.io.sources import scan_inputs

    paths = {name: [r.path for r in scan_inputs(source)] for name, source in sources.items()}
    reads: dict[str, list[float]] = {}
    for _ in range(5):
        for name, listed in paths.items():
            start = time.perf_counter()
            for path in listed:
                read_bytes(path)
            reads.setdefault(name, []).append((time.perf_counter() - start) / len(listed))
    print("  reading alone, best of 5: " + ", ".join(
        f"{name} {min(v) * 1e6:.0f} us/image ({min(reads['files']) / min(v):.2f}x files)" for name, v in reads.items()))


def export(args) -> None:
    import duckdb

    from featx.extract.job import extract
    from featx.store.parquet import export_parquet

    root = Path(tempfile.mkdtemp(prefix="featx-data-out-"))
    pngs = fashion_pngs(args.rows)
    sources = write_sources(pngs, root / "src", args.shards)
    start = time.perf_counter()
    store = extract(sources["shards"], root / "store", model="resnet18", weights="random", image_size=32,
                    progress=False)
    extracted = time.perf_counter() - start
    start = time.perf_counter()
    export_parquet(store, root / "embeddings.parquet")
    exported = time.perf_counter() - start
    import pandas as pd

    connection = duckdb.connect()
    connection.register("labels", pd.DataFrame({"label": fashion_mnist.CLASSES, "kind": [
        "footwear" if c in ("sandal", "sneaker", "ankle-boot") else "clothing" for c in fashion_mnist.CLASSES]}))
    start = time.perf_counter()
    rows = connection.sql(f"SELECT l.kind, count(*) AS n, avg(list_aggregate(e.flatten::FLOAT[], 'avg')) AS mean "
                      f"FROM '{root / 'embeddings.parquet'}' e JOIN labels l USING (label) WHERE e.status = 'ok' "
                      "GROUP BY l.kind ORDER BY l.kind").fetchall()
    queried = time.perf_counter() - start
    size = (root / "embeddings.parquet").stat().st_size
    print(f"store of {len(store)} rows (extract {extracted:.1f} s), export {exported:.2f} s, "
          f"file {size / 1e6:.1f} MB, DuckDB join query {queried:.2f} s: {rows}")


def onnx(args) -> None:
    import onnxruntime as ort
    from PIL import Image, ImageOps

    from featx.extract.job import extract
    from featx.io.sources import scan_inputs
    from featx.learn.classify import train_shallow
    from featx.learn.onnx_export import export_onnx, read_onnx_metadata
    from featx.learn.predict import predict

    root = Path(tempfile.mkdtemp(prefix="featx-onnx-"))
    store = extract(HYMENOPTERA / "train", root / "store", progress=False)
    train_shallow(store, classifier=args.classifier, out=root / "model", learning_curve=False)
    export_onnx(root / "model", root / "model.onnx")
    paths = [r.path for r in scan_inputs(HYMENOPTERA / "val")]
    session = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    pre = read_onnx_metadata(root / "model.onnx")["preprocess"]
    crop, short = pre["crop_size"], pre["resize_size"]
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[pre["interpolation"]]

    def view(path):  # the Pillow-only preprocessing of docs/data.md
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        w, h = image.size
        side = crop * min(w, h) / short
        box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
        image = image.resize((crop, crop), resample, box=box, reducing_gap=3.0)
        return np.asarray(image, dtype=np.float32).transpose(2, 0, 1)

    timings = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        expected = predict(root / "model", HYMENOPTERA / "val")
        timings.setdefault("featx predict", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        labels, scores = [], []
        for first in range(0, len(paths), 32):
            batch = np.stack([view(p) for p in paths[first:first + 32]])
            out = session.run(["label", "scores"], {"image": batch})
            labels += list(out[0])
            scores.append(out[1])
        timings["onnxruntime + Pillow"] = timings.get("onnxruntime + Pillow", []) + [time.perf_counter() - start]
    scores = np.concatenate(scores)
    columns = [c for c in expected.columns if c.startswith("score:")]
    agree = int((np.array(labels) == expected["predicted"].to_numpy()).sum())
    print(f"hymenoptera val ({len(paths)} images), {args.classifier}, ONNX opset 17, best of {args.repeats}:")
    for name, values in timings.items():
        print(f"  {name:22s} {min(values):6.2f} s  {len(paths) / min(values):6.1f} img/s  "
              f"ratio to featx predict {min(timings['featx predict']) / min(values):.2f}x")
    print(f"  Pillow-only preprocessing: same label as featx predict for {agree}/{len(paths)} images; "
          f"max score difference {np.abs(scores - expected[columns].to_numpy()).max():.2e}")
    print(json.dumps({"model_bytes": (root / "model.onnx").stat().st_size}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("inputs")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p = sub.add_parser("speed")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--shards", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p = sub.add_parser("export")
    p.add_argument("--rows", type=int, default=20000)
    p.add_argument("--shards", type=int, default=20)
    p = sub.add_parser("onnx")
    p.add_argument("--classifier", default="linear-svm")
    p.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    {"inputs": inputs, "speed": speed, "export": export, "onnx": onnx}[args.what](args)


if __name__ == "__main__":
    main()

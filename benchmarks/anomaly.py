"""featx anomaly on the standard one-class protocols, and PatchCore localisation of planted defects.

  * One-class Fashion-MNIST: for each class, `featx.fit_anomaly` learns normal from that class's
    first 1,000 train images and scores the full 10,000-image test split (that class normal, the
    nine others anomalous); per-class image AUROC and their mean. Default backbone, image level.
  * One-class digits (data/digits-demo): per class, 5 folds of the class's images; each fold's
    memory holds the other 4/5, and the fold is scored against every image of the other classes.
  * Localisation: 100 hymenoptera val images (seeded choice) get a planted defect each (a scratch, a
    blob or a pasted patch; their masks kept); the patch-level model learns from the train images;
    image AUROC of the 100 defective against the same 100 clean images, and pixel AUROC.
  * Cost: a patch-level fit on 400 images at 224 px (the 398 hymenoptera photos as normal rows and
    the 100 clean copies as held-out normals): extraction, fit and scoring time, the memory's size,
    and the peak RSS of the process (measured in a child process).

    python benchmarks/anomaly.py [--cache runs/anomaly] [--only fmnist,digits,localisation,cost]

Stores are cached under --cache and reused (extraction is the slow part); Fashion-MNIST's 20,000
images are extracted once and serve all ten classes."""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import fashion_mnist  # benchmarks/fashion_mnist.py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
HYMENOPTERA = Path(os.environ.get("FEATX_HYMENOPTERA", REPO.parent / "shared" / "datasets" / "hymenoptera"))
PATCH_LAYERS = ["blocks.2.1.add", "blocks.4.2.add"]  # efficientnet_lite0's stage ends at strides 8 and 16
DEFECTS = 100


def cached_store(inputs, store_dir: Path, **options):
    import featx

    if (store_dir / "manifest.json").is_file():
        store = featx.FeatureStore.open(store_dir)
        if store.complete:
            return store
    print(f"extracting {inputs} → {store_dir} (resumable) …", flush=True)
    return featx.extract(inputs, store_dir, progress=True, **options)


# --- one-class protocols ---------------------------------------------------------------------------

def one_class_fmnist(cache: Path) -> dict:
    import featx

    images = fashion_mnist.write_images(cache / "fmnist" / "images", {"train": 1000, "test": None})
    store = cached_store(images, cache / "fmnist" / "store")
    results = {}
    for name in fashion_mnist.CLASSES:
        start = time.perf_counter()
        model = featx.fit_anomaly(store, normal=[name])
        evaluation = model.record["evaluation"]
        results[name] = {"auroc": evaluation["auroc"], "auroc_std": evaluation["auroc_std"],
                         "normal": evaluation["normal"], "anomalous": evaluation["anomalous"],
                         "fpr_at_threshold": evaluation["fpr_at_threshold"], "seconds": time.perf_counter() - start}
        print(f"  {name:<11} AUROC {evaluation['auroc']:.4f} ± {evaluation['auroc_std']:.4f} "
              f"({results[name]['seconds']:.1f} s)", flush=True)
    mean = float(np.mean([r["auroc"] for r in results.values()]))
    print(f"Fashion-MNIST one-class mean AUROC {mean:.4f} (target ≥ 0.94)", flush=True)
    return {"per_class": results, "mean_auroc": mean}


def one_class_digits(cache: Path, folds: int = 5) -> dict:
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold

    from featx.anomaly.memory import ImageMemory
    from featx.options import ANOMALY_FIT

    store = cached_store(REPO / "data" / "digits-demo", cache / "digits" / "store")
    ok = np.flatnonzero(store.ok)
    X = np.asarray(store.gather(None, ok), dtype=np.float32)
    labels = store.labels[ok].astype(str)
    per_class = {}
    for name in sorted(set(labels)):
        normal, others = np.flatnonzero(labels == name), np.flatnonzero(labels != name)
        aurocs = []
        for learn, held in KFold(folds, shuffle=True, random_state=0).split(normal):
            memory = ImageMemory.fit(X[normal[learn]], k=ANOMALY_FIT.k, metric=ANOMALY_FIT.metric)
            scores = memory.score(np.concatenate([X[normal[held]], X[others]]))
            truth = np.r_[np.zeros(len(held)), np.ones(len(others))]
            aurocs.append(roc_auc_score(truth, scores))
        per_class[name] = {"auroc": float(np.mean(aurocs)), "fold_std": float(np.std(aurocs))}
        print(f"  digit {name}: AUROC {per_class[name]['auroc']:.4f} (folds ± {per_class[name]['fold_std']:.4f})",
              flush=True)
    mean = float(np.mean([r["auroc"] for r in per_class.values()]))
    print(f"digits one-class mean AUROC {mean:.4f}", flush=True)
    return {"per_class": per_class, "mean_auroc": mean, "folds": folds}


# --- localisation of planted defects ------------------------------------------------------------------

def load_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def plant_defect(pixels: np.ndarray, kind: str, rng: np.random.Generator, donor: np.ndarray):
    """(image with a defect, its mask) for one of: scratch, blob, patch (pasted from `donor`).
    Defects sit in the central region the network's centre crop keeps."""
    from PIL import Image, ImageDraw

    h, w = pixels.shape[:2]
    side = min(h, w)
    cx, cy = w / 2 + rng.uniform(-0.28, 0.28) * side, h / 2 + rng.uniform(-0.28, 0.28) * side
    image, mask = Image.fromarray(pixels.copy()), Image.new("L", (w, h), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.18, 0.3) * side
        width = max(3, int(rng.uniform(0.012, 0.022) * side))
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        colour = tuple(int(v) for v in (rng.integers(0, 40, 3) if rng.random() < 0.5 else rng.integers(215, 256, 3)))
        for target, fill in ((draw, colour), (draw_mask, 255)):
            target.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=width)
    elif kind == "blob":
        rx, ry = rng.uniform(0.05, 0.09, 2) * side
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw_mask.ellipse(box, fill=255)
    else:
        size = int(rng.uniform(0.12, 0.18) * side)
        dh, dw = donor.shape[:2]
        top, left = rng.integers(0, dh - size), rng.integers(0, dw - size)
        piece = Image.fromarray(donor[top:top + size, left:left + size])
        corner = (int(cx - size / 2), int(cy - size / 2))
        image.paste(piece, corner)
        draw_mask.rectangle([corner[0], corner[1], corner[0] + size - 1, corner[1] + size - 1], fill=255)
    return np.asarray(image), np.asarray(mask)


def localisation_manifest(cache: Path) -> Path:
    """manifest.csv: the train photos (normal, train split), 100 val photos as clean PNG copies and
    the same 100 with a planted defect (val split, label 'defect', with their masks)."""
    from PIL import Image

    folder = cache / "localisation"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(0)
    train = sorted(p for p in (HYMENOPTERA / "train").rglob("*") if p.is_file())
    val = sorted(p for p in (HYMENOPTERA / "val").rglob("*") if p.is_file())
    chosen = [val[i] for i in sorted(rng.choice(len(val), DEFECTS, replace=False))]
    rows = [{"path": str(p), "label": "good", "split": "train", "mask": ""} for p in train]
    for folder_name in ("clean", "defect", "mask"):
        (folder / folder_name).mkdir(parents=True, exist_ok=True)
    for n, path in enumerate(chosen):
        pixels = load_rgb(path)
        kind = ("scratch", "blob", "patch")[n % 3]
        donor = load_rgb(train[int(rng.integers(len(train)))])
        broken, mask = plant_defect(pixels, kind, rng, donor)
        stem = f"{n:03d}_{path.stem}"
        Image.fromarray(pixels).save(folder / "clean" / f"{stem}.png")
        Image.fromarray(broken).save(folder / "defect" / f"{stem}_{kind}.png")
        Image.fromarray(mask).save(folder / "mask" / f"{stem}_{kind}.png")
        rows.append({"path": f"clean/{stem}.png", "label": "good", "split": "val", "mask": ""})
        rows.append({"path": f"defect/{stem}_{kind}.png", "label": "defect", "split": "val",
                     "mask": f"mask/{stem}_{kind}.png"})
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split", "mask"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def localisation(cache: Path, coreset: float | None = None, image_size: int | None = None) -> dict:
    import featx
    from featx.options import ANOMALY_FIT

    manifest = localisation_manifest(cache)
    size = f"-{image_size}" if image_size else ""
    store = cached_store(manifest, cache / "localisation" / f"store{size}", pool="flatten", layers=PATCH_LAYERS,
                         image_size=image_size)
    coreset = coreset or ANOMALY_FIT.coreset
    start = time.perf_counter()
    model = featx.fit_anomaly(store, cache / "localisation" / f"model-{coreset}{size}", normal=["good"], patch=True,
                              coreset=coreset, masks=manifest, progress=True)
    seconds = time.perf_counter() - start
    evaluation = model.record["evaluation"]
    by_kind = {}
    held = model.held_out
    from sklearn.metrics import roc_auc_score

    clean = held.loc[~held["anomalous"], "score"].to_numpy()
    for kind in ("scratch", "blob", "patch"):
        part = held.loc[held["anomalous"] & held["path"].str.endswith(f"_{kind}.png"), "score"].to_numpy()
        by_kind[kind] = float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(part))], np.r_[clean, part]))
    paired, peak = paired_checks(model, manifest)
    result = {"image_auroc": evaluation["auroc"], "image_auroc_std": evaluation["auroc_std"],
              "pixel_auroc": evaluation["pixel"]["auroc"], "image_auroc_by_kind": by_kind,
              "defect_above_its_clean_copy": paired, "heatmap_peak_in_mask": peak,
              "coreset": coreset, "image_size": image_size, "memory": model.record["memory"], "fit_seconds": seconds,
              "normal_images": model.record["normal"]["rows"]}
    print(f"localisation (coreset {coreset}, image size {image_size or 'default'}): image AUROC {evaluation['auroc']:.4f} ± {evaluation['auroc_std']:.4f} "
          f"(target ≥ 0.95), pixel AUROC {evaluation['pixel']['auroc']:.4f} (target ≥ 0.90); by kind "
          + ", ".join(f"{k} {v:.3f}" for k, v in by_kind.items())
          + f"; defect scored above its own clean copy {paired:.2f}, heatmap peak inside the mask {peak:.2f}; "
          f"fit {seconds:.0f} s", flush=True)
    return result


def paired_checks(model, manifest: Path) -> tuple[float, float]:
    """Share of defective images scored above their own clean copy, and share whose heatmap peaks
    inside the planted defect's mask."""
    from featx.anomaly.fitting import read_masks
    from featx.anomaly.heatmap import mask_in_view

    held = model.held_out.reset_index(drop=True)
    masks = read_masks(manifest)
    score_of = {Path(p).stem: s for p, s in zip(held["path"], held["score"])}
    preprocess = model.extractor(device="cpu").backbone.preprocess
    above, inside = [], []
    for i in np.flatnonzero(held["anomalous"].to_numpy()):
        stem = Path(held["path"].iat[i]).stem
        above.append(held["score"].iat[i] > score_of[stem.rsplit("_", 1)[0]])
        mask = mask_in_view(Path(masks[held["path"].iat[i]]).read_bytes(), preprocess)
        heat = model.heatmaps_of(model.grids[i:i + 1])[0]
        inside.append(bool(mask.flat[int(np.argmax(heat))]))
    return float(np.mean(above)), float(np.mean(inside))


# --- cost of a patch-level fit on 400 images ------------------------------------------------------

def cost_manifest(cache: Path) -> Path:
    """The 398 hymenoptera photos (train split, normal) and the 100 clean copies (val, held-out normals)."""
    manifest = localisation_manifest(cache)
    rows = [{"path": str(p), "label": "good", "split": "train"}
            for p in sorted(p for p in HYMENOPTERA.rglob("*") if p.is_file())]
    with open(manifest) as f:
        rows += [{"path": str(manifest.parent / r["path"]), "label": "good", "split": "val"}
                 for r in csv.DictReader(f) if r["path"].startswith("clean/")]
    out = cache / "cost" / "manifest.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def cost_child(cache: Path, step: str) -> dict:
    """One step in its own process, so that its peak RSS is the step's own: `extract` the maps, or
    `fit` the patch-level model and score the 100 defective images with heatmaps."""
    import shutil

    import featx

    folder = cache / "cost"
    if step == "extract":
        manifest = cost_manifest(cache)
        shutil.rmtree(folder / "store", ignore_errors=True)
        start = time.perf_counter()
        featx.extract(manifest, folder / "store", pool="flatten", layers=PATCH_LAYERS, progress=False)
        result = {"extract_seconds": time.perf_counter() - start}
    else:
        shutil.rmtree(folder / "model", ignore_errors=True)
        start = time.perf_counter()
        model = featx.fit_anomaly(folder / "store", folder / "model", patch=True)
        fit_seconds = time.perf_counter() - start
        defects = cache / "localisation" / "defect"
        queries = [str(defects / p) for p in sorted(os.listdir(defects))]
        start = time.perf_counter()
        featx.score_anomaly(model, queries, heatmaps=folder / "heatmaps")
        result = {"fit_seconds": fit_seconds, "score_seconds": time.perf_counter() - start,
                  "normal_images": model.record["normal"]["rows"], "memory": model.record["memory"],
                  "scored_images": len(queries)}
    return {**result, f"{step}_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def cost(cache: Path) -> dict:
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import anomaly; from pathlib import Path; "
            "print(json.dumps(anomaly.cost_child(Path(sys.argv[2]), sys.argv[3])))")
    result = {}
    for step in ("extract", "fit"):
        done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(cache), step], check=True,
                              capture_output=True, text=True)
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    memory = result["memory"]
    print(f"cost: patch level at 224 px: extract 498 images {result['extract_seconds']:.0f} s (peak RSS "
          f"{result['extract_peak_rss_mb']:.0f} MB); fit on {result['normal_images']} normal images + threshold on "
          f"100 {result['fit_seconds']:.0f} s, memory {memory['vectors']} × {memory['dim']} = "
          f"{memory['bytes'] / 2**20:.1f} MB of {memory['patches']} patches; score {result['scored_images']} "
          f"images with heatmaps {result['score_seconds']:.0f} s; fit + score peak RSS "
          f"{result['fit_peak_rss_mb']:.0f} MB", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", type=Path, default=REPO / "runs" / "anomaly")
    parser.add_argument("--only", default="fmnist,digits,localisation,cost")
    parser.add_argument("--coreset", type=float, default=None, help="localisation: coreset fraction (default: featx's)")
    parser.add_argument("--image-size", type=int, default=None, help="localisation: input size (default: the weights')")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    sections = {"fmnist": one_class_fmnist, "digits": one_class_digits,
                "localisation": lambda cache: localisation(cache, args.coreset, args.image_size), "cost": cost}
    results = {}
    for name in args.only.split(","):
        if name in ("localisation", "cost") and not HYMENOPTERA.is_dir():
            print(f"{name}: skipped, {HYMENOPTERA} not found", flush=True)
            continue
        if name == "fmnist" and not fashion_mnist.available():
            fashion_mnist.ensure_package()
        print(f"== {name}", flush=True)
        results[name] = sections[name](args.cache)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

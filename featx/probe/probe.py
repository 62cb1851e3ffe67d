"""`featx probe`: which backbone, layer, pooling and classifier suit the user's labelled images,
measured on those images.

Candidates are every given backbone whose weights are available offline × a few layers spread
over depth × a few poolings. Each backbone is extracted once (all layers and poolings in one
forward pass, `multipool.py`) into ordinary stores under PROBE_DIR/stores, so a re-run resumes and
reuses them. The candidates are screened on samples of the training rows by successive halving
(`halving.py`), and the survivors are scored in full by tuned classifiers with the honest protocol
(`scoring.py`), with their retrieval mAP@10 and their cost; scores are cached under
PROBE_DIR/scores (`candidate.py`). The domain-shift diagnostic (`domain_shift.py`) says how far the
images are from the training data; featx's defaults and the raw-pixel baseline are scored for
comparison (`baselines.py`). Outputs: a ranked DataFrame, probe.json, probe.html and the winner as
a `featx run` recipe."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from featx.backbones import DEFAULT_BACKBONE, resolve_family
from featx.backbones.layers import describe_layers
from featx.errors import InputError, WeightsError
from featx.io import atomic
from featx.io.sources import is_glob, scan_inputs
from featx.options import PROBE
from featx.probe.candidate import (
    CandidateRows,
    current_rows,
    describe,
    digest,
    safe_name,
    score_in_full,
    screen,
)
from featx.probe.candidates import layer_depths, parse_layers
from featx.probe.scoring import PROBE_CLASSIFIERS, RBF_MAX_ROWS, choose_protocol

log = logging.getLogger(__name__)

ALLOWED_POOLINGS = ("avg", "max", "avgmax", "gem")
RECIPE = "winner.yaml"


# --- options -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    seconds: float | None = None
    candidates: int | None = None

    def exhausted(self, started: float, scored: int) -> bool:
        if self.seconds is not None and time.perf_counter() - started >= self.seconds:
            return True
        return self.candidates is not None and scored >= self.candidates

    def describe(self) -> str:
        return f"{self.seconds:g} s" if self.seconds is not None else f"{self.candidates} candidates"


def parse_budget(budget: str | int | None) -> Budget:
    """'10m', '90s', '1.5h': time for the whole probe; a plain number N: score N candidates. The
    first candidate is always scored, so a probe never ends with nothing."""
    if budget is None or budget == "":
        return Budget()
    text = str(budget).strip().lower()
    if re.fullmatch(r"\d+", text) and int(text) >= 1:
        return Budget(candidates=int(text))
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smh])", text)
    if match and float(match.group(1)) > 0:
        return Budget(seconds=float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)])
    raise InputError(f"--budget '{budget}' is not allowed; give a time such as 90s, 10m or 1h, or a number "
                     "of candidates such as 12")


def parse_pools(pools: str | Sequence[str]) -> list[str]:
    names = [p.strip() for p in (pools.split(",") if isinstance(pools, str) else pools) if p.strip()]
    bad = [p for p in names if p not in ALLOWED_POOLINGS]
    if not names or bad:
        raise InputError(f"--pool {','.join(bad) or '(empty)'} is not allowed; give a comma-separated list of "
                         f"{', '.join(ALLOWED_POOLINGS)} (flatten is not probed: its vectors are too large)")
    return list(dict.fromkeys(names))


def _offline(model: str) -> bool:
    family = resolve_family(model)  # an unknown name raises, naming `featx models`
    try:
        return family.cached_weights(model) is not None
    except Exception:  # a model without default weights
        return False


# --- the probe -----------------------------------------------------------------------------------

def probe(inputs, out: str | Path, *, models: Sequence[str] | None = PROBE.models,
          layers: str | Sequence[str] = PROBE.layers,
          pools: str | Sequence[str] = PROBE.pools, budget: str | int | None = PROBE.budget,
          weights: str = PROBE.weights,
          image_size: int | None = PROBE.image_size, batch_size: int = PROBE.batch_size,
          workers: int | None = PROBE.workers, device: str = PROBE.device, cv: int = PROBE.cv, seed: int = PROBE.seed,
          classifiers: str | Sequence[str] = PROBE.classifiers, shift_images: int = PROBE.shift_images,
          exhaustive: bool = PROBE.exhaustive, baselines: bool = PROBE.baselines,
          progress: bool = True) -> pd.DataFrame:
    """Score backbone × layer × pooling candidates on labelled `inputs`; write PROBE_DIR `out`
    (probe.json, the plots and winner.yaml; `featx.api.probe` adds the page, probe.html).

    Returns the candidates ranked best first (balanced accuracy of their best classifier), one row
    each; `frame.attrs` holds the output paths, the protocol and the domain-shift diagnostic."""
    started = time.perf_counter()
    out = Path(out)
    if not (out / "stores").is_dir():  # a probe folder being resumed has its stores already
        from featx.store.artifacts import check_output

        check_output(out, "probe")
    budget_limit, poolings = parse_budget(budget), parse_pools(pools)
    records = scan_inputs(inputs)
    labelled = _labelled(records)
    protocol = choose_protocol(np.array([r.label for r in labelled], dtype=object),
                               np.array([r.split or "" for r in labelled], dtype=object), cv)
    skipped: list[dict] = []
    # the rows that rank a candidate: the 'train' rows with a held-out split, else every labelled row
    n_train = sum(r.split == "train" for r in labelled) if protocol.kind == "held-out" else len(labelled)
    classifiers = _feasible_classifiers(classifiers, n_train, skipped)
    usable = _usable_models(list(models or [DEFAULT_BACKBONE]), weights, skipped)
    plans = {model: _layer_plan(model, layers, image_size) for model in usable}
    total = sum(len(p["layers"]) for p in plans.values()) * len(poolings)
    log.info("probe: %d candidates (%s), %s", total, ", ".join(f"{m}: {len(p['layers'])} layers" for m,
                                                               p in plans.items()),
             protocol.description)
    run = _Run(out=out, records=records, poolings=poolings, protocol=protocol, classifiers=classifiers,
               budget=budget_limit, started=started, skipped=skipped, cv=cv, seed=seed, progress=progress,
               exhaustive=exhaustive, n_train=n_train,
               extract={"weights": weights, "image_size": image_size, "batch_size": batch_size, "workers": workers,
                        "device": device, "shift_images": shift_images, "seed": seed, "progress": progress})
    candidates, shifts = _score_candidates(run, plans)
    frame = _rank(candidates)
    held_out = _held_out_figures(frame, run)
    compared = _compared(inputs, run) if baselines else None
    seconds = time.perf_counter() - started
    given = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    recipe_inputs = [str(i) if is_glob(i) else str(Path(i).resolve()) for i in given]
    paths = _write_outputs(frame, out, inputs=recipe_inputs, protocol=protocol, shifts=shifts, skipped=skipped,
                           classifiers=list(classifiers), weights=weights, image_size=image_size, cv=cv, seed=seed,
                           seconds=seconds, n_images=len(labelled), classes=sorted({r.label for r in labelled}),
                           workers=workers, held_out=held_out, baselines=compared)
    frame.attrs.update({"protocol": protocol.to_dict(), "domain_shift": shifts, "skipped": skipped,
                        "held_out": held_out, "baselines": compared,
                        "seconds": seconds, **{k: str(v) for k, v in paths.items()}})
    return frame


def _labelled(records: list) -> list:
    labelled = [r for r in records if r.label is not None]
    if not labelled:
        raise InputError(f"featx probe needs labels, and none of the {len(records)} images has one; put the images "
                         "in one folder per class (optionally under train/ and val/), or give a CSV/Parquet "
                         "manifest with a 'label' column")
    return labelled


def _feasible_classifiers(classifiers: str | Sequence[str], fit_rows: int, skipped: list[dict]) -> list[str]:
    """The classifiers asked for, checked, without the RBF SVM on more training rows than it can fit."""
    classifiers = [c.strip() for c in (classifiers.split(",") if isinstance(classifiers, str) else classifiers)
                   if c.strip()]
    unknown = [c for c in classifiers if c not in PROBE_CLASSIFIERS]
    if unknown or not classifiers:
        raise InputError(f"unknown probe classifier(s) {unknown}; allowed: {', '.join(PROBE_CLASSIFIERS)}")
    if "rbf-svm" in classifiers and fit_rows > RBF_MAX_ROWS:
        reason = (f"{fit_rows:,} training rows; an RBF SVM's fit grows with the square of the rows, so the probe "
                  f"tries it up to {RBF_MAX_ROWS:,} (train-shallow --classifier rbf-svm still can)")
        log.warning("probe: not scoring rbf-svm: %s", reason)
        skipped.append({"what": "classifier rbf-svm", "reason": reason})
        classifiers = [c for c in classifiers if c != "rbf-svm"]
        if not classifiers:
            raise InputError(f"--classifiers rbf-svm alone cannot be scored here: {reason}; add pca-logreg or "
                             f"linear-svm")
    return classifiers


def _usable_models(models: list[str], weights: str, skipped: list[dict]) -> list[str]:
    """The models whose weights are at hand (the others are skipped, with the reason)."""
    usable = []
    for model in dict.fromkeys(models):
        if weights == "default" and not _offline(model):
            reason = ("its pretrained weights are not available offline (not bundled, not in the torch/Hugging "
                      "Face cache); `featx models` shows which are, or pass --weights FILE")
            log.warning("probe: skipping %s: %s", model, reason)
            skipped.append({"what": model, "reason": reason})
        else:
            usable.append(model)
    if not usable:
        raise WeightsError(f"none of the models {models} has weights available offline; run `featx models` to see "
                           "which do (the bundled efficientnet_lite0 always does), or pass --weights random|FILE")
    return usable


def _layer_plan(model: str, layers: str | Sequence[str], image_size: int | None) -> dict:
    """The layers to probe in `model`, with their depths and the model's layer order."""
    rows = describe_layers(model, image_size=image_size)
    chosen = parse_layers(layers, rows, model)
    order = [r["layer"] for r in rows]
    return {"layers": chosen, "depths": layer_depths(chosen, order), "order": order}


@dataclass
class _Run:
    """What every candidate of one probe shares."""

    out: Path
    records: list
    poolings: list[str]
    protocol: object
    classifiers: list[str]
    budget: "Budget"
    started: float
    skipped: list[dict]
    cv: int
    seed: int
    progress: bool
    exhaustive: bool  # score every candidate in full: no screen
    n_train: int  # the rows that rank a candidate
    extract: dict  # _prepare_backbone's options


def _score_candidates(run: _Run, plans: dict) -> tuple[list[dict], dict]:
    """Each backbone extracted once; its layer × pooling candidates screened by successive halving
    (`halving.py`; every one of them with `run.exhaustive`) and the survivors scored in full, best
    screen first, until the budget is spent. What the budget leaves out is listed in `run.skipped`;
    a candidate the screen dropped keeps its screen scores and no full score."""
    from tqdm.auto import tqdm

    from featx.probe.halving import halve

    contexts, shifts = {}, {}
    for model, plan in plans.items():
        if contexts and run.budget.exhausted(run.started, 0):  # a time budget spent on the first backbones
            run.skipped.extend({"what": f"{model} / {layer} / {how}", "reason": f"budget {run.budget.describe()}"}
                               for how in run.poolings for layer in plan["layers"])
            continue
        contexts[model] = _prepare_backbone(model, plan, run.poolings, run.records, run.out, **run.extract)
        shifts[model] = contexts[model]["shift"]
    # deepest first: under a budget, and among equal screens, the usual choice comes first
    keys = [(model, layer, how) for model in contexts for how in run.poolings
            for layer in reversed(plans[model]["layers"])]
    with tqdm(desc="probe: screen", unit="candidate", disable=not run.progress, dynamic_ncols=True) as bar:
        def screen_one(key, rows):
            bar.update(1)
            return screen(key, rows, contexts[key[0]], run)

        survivors, screens = (keys, {key: [] for key in keys}) if run.exhaustive else \
            halve(keys, screen_one, run.n_train)
    candidates, scored = [], 0
    with tqdm(total=len(survivors), desc="probe: score", unit="candidate", disable=not run.progress,
              dynamic_ncols=True) as bar:
        for key in survivors:
            model, layer, how = key
            if scored and run.budget.exhausted(run.started, scored):  # at least one, once extracted
                run.skipped.append({"what": f"{model} / {layer} / {how}", "reason": f"budget {run.budget.describe()}"})
            else:
                candidates.append(score_in_full(key, contexts[model], plans[model], run) | _screened(screens[key]))
                scored += 1
            bar.update(1)
    candidates += [describe(key, contexts[key[0]], plans[key[0]]) | _screened(screens[key])
                   for key in keys if key not in survivors]
    return candidates, shifts


def _screened(screens: list[dict]) -> dict:
    """A candidate's screens: the last one's score and rows (the most rows it was screened on)."""
    last = screens[-1] if screens else {}
    return {"screen": last.get("score"), "screen_rows": last.get("rows"), "screens": screens}


def _prepare_backbone(model: str, plan: dict, poolings: list[str], records, out: Path, *, weights, image_size,
                      batch_size, workers, device, shift_images, seed, progress) -> dict:
    """Extract (or resume) the backbone's stores; measure its throughput, per-layer speed and
    domain shift."""
    from featx.extract.extractor import ImageViews
    from featx.probe.candidates import forward_speed
    from featx.probe.domain_shift import measure_domain_shift
    from featx.probe.multipool import MultiPoolExtractor, extract_multipool

    extractor = MultiPoolExtractor(model, poolings=poolings, layers=plan["layers"], weights=weights,
                                   image_size=image_size, batch_size=batch_size, workers=workers, device=device)
    folder = out / "stores" / safe_name(model)
    stores, timing = extract_multipool(records, {how: folder / how for how in poolings}, extractor, weights=weights,
                                       progress=progress, description=f"extract {model}")
    timing_file = folder / "throughput.json"
    if timing["images"] > 0 and timing["seconds"] > 0:
        atomic.write_json(timing_file, timing | {"img_per_s": timing["images"] / timing["seconds"]})
    throughput = json.loads(timing_file.read_text())["img_per_s"] if timing_file.is_file() else None

    backbone = extractor.backbone
    crop = backbone.preprocess.crop_size
    speed = forward_speed(backbone.model, plan["layers"], crop, extractor.device)

    first = stores[poolings[0]]
    ok_paths = first.meta.loc[first.ok, "path"].tolist()
    sample = sorted(np.random.default_rng(seed).choice(ok_paths, size=min(shift_images, len(ok_paths)),
                                                       replace=False).tolist()) if ok_paths else []
    meaningful = weights != "random"
    shift_key = digest(backbone.weights_id, backbone.weights_sha256, plan["layers"], sample,
                        first.config["preprocess"])
    shift_file = folder / "domain_shift.json"
    cached = json.loads(shift_file.read_text()) if shift_file.is_file() else {}
    if cached.get("key") == shift_key:
        shift = cached["report"]
    else:
        dataset = ImageViews(sample, backbone.preprocess, 1, "pil")
        shift = measure_domain_shift(backbone, dataset, plan["layers"], plan["order"], meaningful=meaningful,
                                     batch_size=batch_size, device=extractor.device).to_dict()
        atomic.write_json(shift_file, {"key": shift_key, "report": shift})
    log.info("probe: %s domain shift: %s", model, shift["advice"])
    rows = {how: current_rows(store, records) for how, store in stores.items()}  # what every candidate reads
    return {"stores": stores, "rows": rows, "throughput": throughput, "speed": speed, "shift": shift}


def _held_out_figures(frame: pd.DataFrame, run: _Run) -> dict | None:
    """With a held-out split: the winner fitted on the 'train' rows and scored once on the held-out
    rows, after the ranking that never saw them."""
    if run.protocol.kind != "held-out" or frame.empty:
        return None
    return {"winner": _score_once(frame.iloc[0], run)}


def _compared(inputs, run: _Run) -> dict:
    """featx's defaults and the raw-pixel baseline on the same images and protocol (`baselines.py`)."""
    from featx.probe.baselines import score_defaults

    options = {k: run.extract[k] for k in ("weights", "image_size", "batch_size", "workers", "device", "progress")}
    return score_defaults(inputs, run.out, cv=run.cv, seed=run.seed, **options)


def _score_once(winner, run: _Run) -> dict:
    from featx.probe.scoring import score_held_out
    from featx.store import FeatureStore

    store = FeatureStore.open(winner["store"])
    X, y, splits = CandidateRows(store, winner["layer"], current_rows(store, run.records)).load()
    scores = score_held_out(X, y, splits, winner["classifier"], cv=run.cv, seed=run.seed)
    return {"backbone": winner["backbone"], "layer": winner["layer"], "pool": winner["pool"],
            "classifier": winner["classifier"], "cv_on_train_balanced_accuracy": float(winner["balanced_accuracy"]),
            **{k: v for k, v in scores.items() if k not in ("C", "train_options")}}


def _rank(candidates: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(candidates)
    for column in ("balanced_accuracy", "accuracy", "macro_f1", "screen"):  # a probe without screens or scores
        if column not in frame:
            frame[column] = np.nan
    # the candidates scored in full first (best first), then those the screen dropped (best screen first)
    frame = frame.sort_values(["balanced_accuracy", "accuracy", "macro_f1", "screen", "dim"],
                              ascending=[False, False, False, False, True], kind="stable",
                              na_position="last").reset_index(drop=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


# --- outputs -------------------------------------------------------------------------------------

def winner_recipe(winner: dict, inputs: list[str], *, weights: str, image_size: int | None, cv: int, seed: int,
                  workers: int | None = None) -> dict:
    """A `featx run` recipe that extracts the winning layer and pooling and trains its classifier
    with the options and tuning the probe scored it with."""
    extract = {"inputs": inputs, "model": winner["backbone"], "weights": weights, "layers": [winner["layer"]],
               "pool": winner["pool"]}
    if image_size is not None:
        extract["image_size"] = int(image_size)
    if workers is not None:
        extract["workers"] = int(workers)
    train = {"layer": winner["layer"], **winner["train_options"], "cv": int(cv), "seed": int(seed)}
    return {"name": "probe-winner", "output": "run", "extract": extract, "train_shallow": train,
            "index": {"layer": winner["layer"], "kind": "auto", "metric": "cosine", "k": 10},
            "report": {"title": f"featx probe winner: {winner['backbone']} / {winner['layer']} / {winner['pool']}"}}


def _write_outputs(frame: pd.DataFrame, out: Path, *, inputs, protocol, shifts, skipped, classifiers, weights,
                   image_size, cv, seed, seconds, n_images, classes, workers=None,
                   held_out: dict | None = None, baselines: dict | None = None) -> dict[str, Path]:
    import yaml

    from featx.probe.plots import score_vs_cost, score_vs_depth

    out.mkdir(parents=True, exist_ok=True)
    records = json.loads(frame.to_json(orient="records"))
    winner = records[0]
    recipe = winner_recipe(winner, inputs, weights=weights, image_size=image_size, cv=cv, seed=seed, workers=workers)
    header = (f"# Written by `featx probe`: the best of {len(records)} candidates, ranked by balanced accuracy "
              f"{winner['balanced_accuracy']:.4f} ± {winner['balanced_accuracy_std']:.4f} ({protocol.description}).\n")
    if held_out:
        once = held_out["winner"]
        header += (f"# Held-out score, measured once after the choice (report this one): balanced accuracy "
                   f"{once['balanced_accuracy']:.4f} ± {once['balanced_accuracy_std']:.4f}, accuracy "
                   f"{once['accuracy']:.4f} ± {once['accuracy_std']:.4f}.\n")
    for figures in (baselines or {}).values():
        header += (f"# For comparison, {figures['what']}: balanced accuracy {figures['balanced_accuracy']:.4f}, "
                   f"accuracy {figures['accuracy']:.4f} ({figures['evaluation']}).\n")
    header += f"# Run it with: featx run {out / RECIPE}\n"
    recipe_text = header + yaml.safe_dump(recipe, sort_keys=False)
    atomic.write_bytes(out / RECIPE, recipe_text.encode())
    plots = {"score_vs_depth.png": score_vs_depth(frame), "score_vs_cost.png": score_vs_cost(frame)}
    for name, data in plots.items():
        atomic.write_bytes(out / name, data)
    report = {"protocol": protocol.to_dict(), "seconds": seconds, "n_images": n_images, "classes": classes,
              "classifiers": classifiers, "candidates": records, "winner": winner, "recipe": str(out / RECIPE),
              "domain_shift": shifts, "skipped": skipped, "held_out": held_out, "baselines": baselines}
    atomic.write_json(out / "probe.json", report)
    return {"json": out / "probe.json", "recipe": out / RECIPE}

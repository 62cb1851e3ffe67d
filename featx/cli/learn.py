"""`featx train-shallow`, `featx predict` and `featx probe`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from featx.cli.common import command, console, emit_frame, err_console, maybe, option
from featx.options import (
    Balance,
    Classifier,
    Device,
    Normalizer,
    OutputFormat,
    PredictOptions,
    ProbeOptions,
    TrainShallowOptions,
)

# --- classifiers -------------------------------------------------------------------------------

@command("train-shallow")
def train_shallow_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write."),
    layer: Optional[str] = option(TrainShallowOptions, "layer"),
    classifier: Optional[Classifier] = option(TrainShallowOptions, "classifier"),
    normalize: Normalizer = option(TrainShallowOptions, "normalize"),
    reduce: str = option(TrainShallowOptions, "reduce"),
    cv: int = option(TrainShallowOptions, "cv"),
    val: Optional[Path] = option(TrainShallowOptions, "val"),
    tune: bool = option(TrainShallowOptions, "tune", "--tune/--no-tune"),
    search: bool = option(TrainShallowOptions, "search"),
    balance: Balance = option(TrainShallowOptions, "balance"),
    budget: float = option(TrainShallowOptions, "budget"),
    baseline: bool = option(TrainShallowOptions, "baseline", "--baseline/--no-baseline"),
    seed: int = option(TrainShallowOptions, "seed"),
    report: Optional[Path] = typer.Option(None, help="Report folder; default MODEL_DIR/report."),
):
    """Train a shallow classifier on stored features and report honest held-out metrics.

    The strength is tuned inside each outer fold, so the score is never seen by the tuning; a 'group'
    column in the store's metadata keeps each group's images in one fold."""
    import warnings

    from featx.learn.classify import train_shallow

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        model = train_shallow(store, layer=layer, classifier=classifier, normalize=normalize, reduce=reduce, cv=cv,
                              val=val, tune=tune, search=search, balance=balance, budget=budget, baseline=baseline,
                              seed=seed, report_dir=report, out=out)
    for warning in caught:
        if "--cv" in str(warning.message) or "near-duplicate" in str(warning.message):
            err_console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    print_classification_report(model.report, out, report or out / "report")


def print_classification_report(report: dict, out: Path, report_dir: Path) -> None:
    spread = report.get("spread")
    table = Table("metric", "value", title=report["evaluation"], caption=f"± {spread}" if spread else None)
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        std = report.get(f"{key}_std")
        table.add_row(key, f"{report[key]:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
    table.add_row("n_train / n_eval", f"{report['n_train']} / {report['n_eval']}")
    chosen = report.get("representation") or {}
    if chosen:
        table.add_row("representation", f"{chosen['representation']} ({', '.join(chosen['layers'])})")
        table.add_row("classifier", chosen["classifier"])
    tuning = report.get("tuning") or {}
    if tuning.get("enabled"):
        table.add_row(f"chosen {tuning['label']}", f"{tuning['chosen']:g} (inner CV {tuning['inner_cv_score']:.4f}; "
                                                   f"grid {tuning['grid'][0]:g}…{tuning['grid'][-1]:g})")
    elif tuning:
        table.add_row(tuning["label"], f"{tuning['fixed']} (fixed: --no-tune)")
    if report.get("best_params") and len(report["best_params"]) > 1:
        table.add_row("best params", ", ".join(f"{k.split('__')[-1]}={v}" for k, v in report["best_params"].items()))
    reduction = report.get("reduction") or {}
    if "compression_ratio" in reduction:
        table.add_row("PQ compression", f"{reduction['compression_ratio']:.0f}x, accuracy change "
                                        f"{reduction['accuracy_change']:+.4f}")
    if report.get("warnings"):
        table.add_row("warnings", f"{sum(w['count'] for w in report['warnings'])} (listed in report.md)")
    console.print(table)
    baseline = report.get("baseline") or {}
    if baseline.get("sentence"):
        console.print(baseline["sentence"], highlight=False)
    if baseline.get("warning"):
        err_console.print(f"[yellow]warning:[/] {baseline['warning']}", highlight=False)
    console.print(f"model: {out}   report: {report_dir}/report.md")




@command("predict")
def predict_cmd(
    model: Path = typer.Argument(..., help="Model folder from train-shallow."),
    images: List[str] = typer.Argument(..., help="Image files, folders or globs."),
    tta: Optional[int] = option(PredictOptions, "tta"),
    output_format: OutputFormat = option(PredictOptions, "format", "--format"),
    top_k: Optional[int] = option(PredictOptions, "top_k"),
    device: Device = option(PredictOptions, "device"),
    batch_size: int = option(PredictOptions, "batch_size"),
    workers: Optional[int] = option(PredictOptions, "workers"),
):
    """Predict labels of new images with a trained model (its own extractor first)."""
    from featx.learn.predict import predict

    result = predict(model, images, tta=tta, top_k=top_k, device=device, batch_size=batch_size, workers=workers)
    emit_frame(result, output_format)




# --- probe -------------------------------------------------------------------------------------

@command("probe")
def probe_cmd(
    inputs: List[str] = typer.Argument(...,
                                       help="Labelled images: class folders (a train/ val/ level gives the split), "
                                            "manifests, globs."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="PROBE_DIR: stores, scores, probe.json, probe.html, winner.yaml."),
    models: Optional[List[str]] = option(ProbeOptions, "models", "--model", "-m"),
    layers: str = option(ProbeOptions, "layers"),
    pools: str = option(ProbeOptions, "pools", "--pool"),
    budget: Optional[str] = option(ProbeOptions, "budget"),
    classifiers: str = option(ProbeOptions, "classifiers"),
    weights: str = option(ProbeOptions, "weights"),
    image_size: Optional[int] = option(ProbeOptions, "image_size"),
    batch_size: int = option(ProbeOptions, "batch_size"),
    workers: Optional[int] = option(ProbeOptions, "workers"),
    device: Device = option(ProbeOptions, "device"),
    cv: int = option(ProbeOptions, "cv"),
    seed: int = option(ProbeOptions, "seed"),
    exhaustive: bool = option(ProbeOptions, "exhaustive"),
    baselines: bool = option(ProbeOptions, "baselines"),
):
    """Measure which backbone × layer × pooling × classifier suits your labelled images."""
    from featx.api import probe

    frame = probe(inputs, out, models=models or None, layers=layers, pools=pools, budget=budget,
                  classifiers=classifiers, weights=weights,
                  image_size=image_size, batch_size=batch_size, workers=workers, device=device, cv=cv, seed=seed,
                  exhaustive=exhaustive, baselines=baselines)
    table = Table("#", "backbone", "layer", "pool", "dim", "classifier", "balanced acc.", "accuracy", "macro-F1",
                  "mAP@10", "img/s (fwd)", "shift", title=frame.attrs["protocol"]["description"])
    for row in frame.to_dict("records"):
        if isinstance(row.get("classifiers"), dict):  # scored in full
            scores = [f"{row[m]:.3f}±{row[m + '_std']:.3f}" for m in ("balanced_accuracy", "accuracy", "macro_f1")]
            classifier, retrieval = row["classifier"], f"{row['map@10']:.4f}"
        else:  # screened out: its screen score on a sample of the training rows
            scores, classifier, retrieval = [f"screen {row['screen']:.3f}", "", ""], f"({row['screen_rows']} rows)", ""
        table.add_row(str(row["rank"]), row["backbone"], row["layer"], row["pool"], str(row["dim"]), classifier,
                      *scores, retrieval, maybe(row["forward_img_per_s"], "{:.0f}"), maybe(row["shift"], "{:.2f}"))
    console.print(table)
    for name, shift in frame.attrs["domain_shift"].items():
        console.print(f"[bold]domain shift[/] {name}: {shift['advice']}", highlight=False)
    for item in frame.attrs["skipped"]:
        err_console.print(f"[yellow]not scored:[/] {item['what']}: {item['reason']}", highlight=False)
    best = frame.iloc[0]
    console.print(f"[bold]winner[/]: {best['backbone']} / layer {best['layer']} / pool {best['pool']} / "
                  f"{best['classifier']}: balanced accuracy {best['balanced_accuracy']:.4f} ± "
                  f"{best['balanced_accuracy_std']:.4f} (ranking)", highlight=False)
    if frame.attrs["held_out"]:
        once = frame.attrs["held_out"]["winner"]
        console.print(f"[bold]winner, held-out rows once[/]: balanced accuracy {once['balanced_accuracy']:.4f} ± "
                      f"{once['balanced_accuracy_std']:.4f} (report this one)", highlight=False)
    for name, figures in (frame.attrs["baselines"] or {}).items():
        console.print(f"[bold]{name}[/]: {figures['what']}: balanced accuracy {figures['balanced_accuracy']:.4f} "
                      f"({figures['evaluation']})", highlight=False)
        if figures.get("warning"):
            err_console.print(f"[yellow]warning:[/] {figures['warning']}", highlight=False)
    console.print(f"probe: {frame.attrs['html']}   json: {frame.attrs['json']}   "
                  f"winner recipe: featx run {frame.attrs['recipe']}", highlight=False)

"""`featx anomaly fit` and `featx anomaly score`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from featx.cli.common import app, console, emit_frame, friendly, maybe, option
from featx.options import AnomalyFitOptions, AnomalyMetric, AnomalyScoreOptions, Device, OutputFormat

anomaly_app = typer.Typer(no_args_is_help=True, help="Defect and novelty detection learnt from normal images only.")
app.add_typer(anomaly_app, name="anomaly")


@anomaly_app.command("fit")
@friendly
def fit_cmd(
    store: Path = typer.Argument(..., help="Feature store (pooled vectors; maps from --pool flatten for --patch)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for anomaly.json, the memory and anomaly.html."),
    normal: Optional[List[str]] = option(AnomalyFitOptions, "normal"),
    layer: Optional[str] = option(AnomalyFitOptions, "layer"),
    patch: bool = option(AnomalyFitOptions, "patch", "--patch"),
    k: int = option(AnomalyFitOptions, "k", "-k"),
    metric: AnomalyMetric = option(AnomalyFitOptions, "metric"),
    coreset: float = option(AnomalyFitOptions, "coreset"),
    fpr: float = option(AnomalyFitOptions, "fpr"),
    cv: int = option(AnomalyFitOptions, "cv"),
    masks: Optional[Path] = option(AnomalyFitOptions, "masks"),
    seed: int = option(AnomalyFitOptions, "seed"),
):
    """Learn normal from a store's rows and calibrate the threshold on held-out normal images."""
    from featx.api import fit_anomaly

    model = fit_anomaly(store, out, normal=normal or None, layer=layer, patch=patch, k=k, metric=metric,
                        coreset=coreset, fpr=fpr, cv=cv, masks=masks, seed=seed, progress=True)
    print_fit_summary(model.record)
    console.print(f"  model: {out}\n  page: {model.html}", highlight=False)


def print_fit_summary(record: dict) -> None:
    t = record["threshold"]
    console.print(f"[bold]{record['mode']}-level anomaly model[/]: {record['normal']['rows']} normal images "
                  f"({record['normal']['rule']}), memory of {record['memory']['vectors']} vectors", highlight=False)
    console.print(f"threshold {t['threshold']:.6g}: false-positive rate {t['fpr_held_out']:.3g} (target "
                  f"{t['fpr_target']:.3g}) on {t['normals']} held-out normal images, {t['calibration']}",
                  highlight=False)
    evaluation = record.get("evaluation") or {}
    if "auroc" in evaluation:
        c = evaluation["confusion"]
        console.print(f"held-out: {evaluation['normal']} normal, {evaluation['anomalous']} anomalous; image AUROC "
                      f"{evaluation['auroc']:.4f} ± {evaluation['auroc_std']:.4f}, AUPRC {evaluation['auprc']:.4f} ± "
                      f"{evaluation['auprc_std']:.4f}; at the threshold {c['true_positive']} caught, "
                      f"{c['false_negative']} missed, {c['false_positive']} false "
                      f"alarm{'' if c['false_positive'] == 1 else 's'}", highlight=False)
    if "pixel" in evaluation:
        console.print(f"pixel AUROC {maybe(evaluation['pixel']['auroc'], '{:.4f}')} on "
                      f"{evaluation['pixel']['images']} images", highlight=False)


@anomaly_app.command("score")
@friendly
def score_cmd(
    model: Path = typer.Argument(..., help="Anomaly model folder (featx anomaly fit)."),
    images: List[str] = typer.Argument(..., help="Image files, folders, globs or a manifest."),
    heatmaps: Optional[Path] = option(AnomalyScoreOptions, "heatmaps"),
    device: Device = option(AnomalyScoreOptions, "device"),
    batch_size: int = option(AnomalyScoreOptions, "batch_size"),
    workers: Optional[int] = option(AnomalyScoreOptions, "workers"),
    output_format: OutputFormat = option(AnomalyScoreOptions, "format", "--format"),
):
    """Score images: a table of path, score and whether it is above the threshold; heatmap overlays as PNG."""
    from featx.anomaly.model import score_anomaly

    frame = score_anomaly(model, images, heatmaps=heatmaps, device=device, batch_size=batch_size, workers=workers,
                          progress=output_format == "table")
    emit_frame(frame, output_format)
    if output_format == "table":
        above = int(frame["above_threshold"].fillna(False).astype(bool).sum())
        console.print(f"{above} of {len(frame)} images above the threshold {frame.attrs['threshold']:.6g}",
                      highlight=False)
        if frame.attrs.get("heatmaps"):
            console.print(f"heatmaps: {len(frame.attrs['heatmaps'])} PNG files in {heatmaps}", highlight=False)

"""`featx audit`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from featx.cli.common import command, console, option
from featx.options import AuditClassifier, AuditOptions, Calibration

# --- data audit --------------------------------------------------------------------------------

@command("audit")
def audit_cmd(
    store: Path = typer.Argument(..., help="Feature store."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for audit.json, suspects.csv, audit.html."),
    write_manifest: bool = option(AuditOptions, "write_manifest", "--write-manifest"),
    layer: Optional[str] = option(AuditOptions, "layer"),
    classifier: AuditClassifier = option(AuditOptions, "classifier"),
    cv: int = option(AuditOptions, "cv"),
    k: int = option(AuditOptions, "k", "-k"),
    threshold: Optional[float] = option(AuditOptions, "threshold"),
    calibrate: Calibration = option(AuditOptions, "calibrate"),
    outlier_z: float = option(AuditOptions, "outlier_z"),
    outlier_k: Optional[int] = option(AuditOptions, "outlier_k"),
    model: Optional[Path] = typer.Option(None, help="A train-shallow model whose learning curve to use."),
    seed: int = option(AuditOptions, "seed"),
):
    """Find label errors, duplicates and train/test leakage, outliers, and whether more data would help."""
    from featx.api import audit

    suspects = audit(store, out=out, write_manifest=write_manifest, layer=layer, classifier=classifier, cv=cv, k=k,
                     threshold=threshold, calibrate=calibrate, outlier_z=outlier_z, outlier_k=outlier_k, model=model,
                     seed=seed,
                     progress=True)
    print_audit_summary(suspects)


def print_audit_summary(suspects) -> None:
    from featx.audit.audit import KIND_TITLES, KINDS

    summary = suspects.attrs["summary"]
    console.print(f"[bold]audit of {summary['store']}[/]: {summary['ok_rows']} images, {summary['flagged_rows']} "
                  f"flagged ({100 * summary['flagged_fraction']:.1f}%)", highlight=False)
    table = Table("issue", "images", "most suspicious")
    for kind in KINDS:
        rows = suspects[suspects["kind"] == kind].head(3)
        examples = [f"{Path(r.path).name} ({r.given_label or ''}"
                    + (f" → {r.suggested_label}" if r.suggested_label and kind != "outlier" else "")
                    + f", {r.score:.3f})"
                    for r in rows.itertuples()]
        table.add_row(KIND_TITLES[kind], str(summary["counts"][kind]), "; ".join(examples))
    console.print(table)
    near = summary["near_duplicates"]
    console.print(f"near-duplicate threshold: cosine ≥ {near['threshold']:.4f} ({near['method']}: {near['rule']})",
                  highlight=False)
    console.print(f"enough data? {summary['enough_data']['sentence']}", highlight=False)
    for name, path in suspects.attrs.get("files", {}).items():
        console.print(f"  {name}: {path}", highlight=False)

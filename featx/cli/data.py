"""`featx export` and `featx import`: a store as Parquet, Parquet vectors as a store, a model as ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from featx.cli.common import command, console, option
from featx.errors import InputError
from featx.options import ExportNormalize, ExportOptions


@command("export")
def export_cmd(
    artifact: Path = typer.Argument(..., help="A feature store (→ Parquet) or a model folder (→ ONNX)."),
    out: Path = typer.Option(..., "--out", "-o", help=(
        "OUT.parquet (one file), a folder (Parquet part files), or MODEL.onnx for a model.")),
    layer: Optional[List[str]] = option(ExportOptions, "layers", "--layer", "-l"),
    normalize: ExportNormalize = option(ExportOptions, "normalize"),
    ok_only: bool = option(ExportOptions, "ok_only", "--ok-only"),
):
    """Write a store's rows and vectors as Parquet (DuckDB, pandas, LanceDB read it), or a model as ONNX."""
    from featx.store.artifacts import artifact_kind

    kind = artifact_kind(artifact)
    if kind == "store":
        from featx.store.parquet import export_parquet

        files = export_parquet(artifact, out, layers=layer or None, normalize=normalize, ok_only=ok_only)
        console.print(f"wrote {out} ({len(files)} file{'s' if len(files) != 1 else ''})", highlight=False)
        return
    if kind == "model":
        if out.suffix.lower() != ".onnx":
            raise InputError(f"a model is exported as ONNX: give -o a name ending in .onnx (got '{out}')")
        from featx.learn.onnx_export import export_onnx, read_onnx_metadata

        export_onnx(artifact, out)
        meta = read_onnx_metadata(out)
        console.print(f"wrote {out}: image {'×'.join(map(str, meta['input']['size']))} → {', '.join(meta['layers'])}"
                      f" → {meta['classifier']} → {len(meta['classes'])} classes", highlight=False)
        return
    raise InputError(f"'{artifact}' is not a featx store or model (found: {kind or 'no featx record'}); pass a "
                     "folder made by `featx extract` or `featx train-shallow`")


@command("import")
def import_cmd(
    source: Path = typer.Argument(..., help="A Parquet file (or folder of part files) with vector columns."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder to create."),
    layer: Optional[List[str]] = option(ExportOptions, "layers", "--layer", "-l"),
    overwrite: bool = typer.Option(False, help="Replace an existing featx store (never anything else)."),
):
    """Make a feature store of vectors kept in Parquet (a `featx export`, or vectors made elsewhere)."""
    from featx.store.parquet import import_parquet

    store = import_parquet(source, out, columns=layer or None, overwrite=overwrite)
    summary = store.summary()
    console.print(f"{out}: {summary['rows']} rows, {summary['ok']} with vectors; layers "
                  + ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in summary["layers"].items()), highlight=False)

"""`featx models`, `featx layers`, `featx extract`, `featx info` and `featx verify`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from featx.cli.common import command, console, err_console, option
from featx.options import Amp, Decoder, Device, Dtype, ExtractEngine, ExtractOptions, LayersOptions, Pool, Resize

# --- backbones and layers ----------------------------------------------------------------------

@command("models")
def models_cmd(pattern: Optional[str] = typer.Argument(None,
                                                       help="Shell pattern, e.g. 'mobilenet*' or 'timm:resnet*'.")):
    """List backbones and whether their pretrained weights work offline now."""
    from featx.backbones import DEFAULT_BACKBONE, list_backbones

    infos = list_backbones(pattern)
    table = Table("model", "source", "offline weights")
    for info in infos:
        name = info.name + (" (default)" if info.name == DEFAULT_BACKBONE else "")
        table.add_row(name, info.source, "yes" if info.offline else "no (download or --weights FILE)")
    console.print(table)
    if pattern is None:
        console.print("timm models are listed with a pattern: featx models 'timm:*'")
    if not infos:
        err_console.print(f"no backbone matches '{pattern}'; try featx models '*{pattern}*'")
        raise typer.Exit(1)


@command("layers")
def layers_cmd(model: str = typer.Argument(LayersOptions.model_fields["model"].default,
                                          help=LayersOptions.model_fields["model"].description),
               image_size: Optional[int] = option(LayersOptions, "image_size")):
    """Print every addressable layer of MODEL with its output shape; mark the default."""
    from featx.backbones.layers import describe_layers

    rows = describe_layers(model, image_size=image_size)
    table = Table("layer", "output shape", "")
    for row in rows:
        table.add_row(row["layer"], "×".join(map(str, row["shape"])), "default" if row["default"] else "")
    console.print(table)


# --- extraction --------------------------------------------------------------------------------

@command("extract")
def extract_cmd(
    inputs: List[str] = typer.Argument(..., help=(
        "Folders, CSV/Parquet manifests, image files, globs, WebDataset .tar shards ('shards/{00000..00009}.tar'), "
        "Parquet image datasets.")),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder."),
    model: str = option(ExtractOptions, "model", "--model", "-m"),
    weights: str = option(ExtractOptions, "weights"),
    layer: Optional[List[str]] = option(ExtractOptions, "layers", "--layer", "-l"),
    pool: Pool = option(ExtractOptions, "pool"),
    image_size: Optional[int] = option(ExtractOptions, "image_size"),
    tta: int = option(ExtractOptions, "tta"),
    batch_size: int = option(ExtractOptions, "batch_size"),
    workers: Optional[int] = option(ExtractOptions, "workers"),
    device: Device = option(ExtractOptions, "device"),
    amp: Amp = option(ExtractOptions, "amp"),
    dtype: Dtype = option(ExtractOptions, "dtype"),
    shard_size: int = option(ExtractOptions, "shard_size"),
    overwrite: bool = typer.Option(False, help="Replace an existing featx store (never anything else)."),
    append: bool = typer.Option(False,
                                help="Add the inputs; keep store rows absent from them while their files exist."),
    frozen: bool = option(ExtractOptions, "frozen"),
    decode: Decoder = option(ExtractOptions, "decode"),
    resize: Resize = option(ExtractOptions, "resize"),
    engine: ExtractEngine = option(ExtractOptions, "engine"),
    ray_address: Optional[str] = option(ExtractOptions, "ray_address"),
    num_gpus_per_worker: Optional[float] = option(ExtractOptions, "num_gpus_per_worker"),
    cpus_per_worker: Optional[float] = option(ExtractOptions, "cpus_per_worker"),
    compile: bool = option(ExtractOptions, "compile", "--compile"),
    image_column: str = option(ExtractOptions, "image_column"),
    label_column: str = option(ExtractOptions, "label_column"),
    split_column: str = option(ExtractOptions, "split_column"),
    label_field: str = option(ExtractOptions, "label_field"),
):
    """Extract features of images into a resumable feature store."""
    from featx.extract.head_start import head_start
    from featx.runtime import spin_briefly

    # decode the first images on the other cores while torch loads (before importing featx.extract)
    early = head_start(inputs, model=model, image_size=image_size, resize=resize, tta=tta, decode=decode,
                       device=device, workers=workers, engine=engine)
    if early is not None:
        spin_briefly()  # the forward pass will be fed from memory (featx.runtime says why)
    try:
        from featx.extract.job import extract

        store = extract(inputs, out, model=model, weights=weights, layers=layer or None, pool=pool,
                        image_size=image_size, tta=tta, batch_size=batch_size, workers=workers, device=device, amp=amp,
                        dtype=dtype, shard_size=shard_size, overwrite=overwrite, append=append, frozen=frozen,
                        decode=decode, resize=resize, engine=engine, ray_address=ray_address,
                        num_gpus_per_worker=num_gpus_per_worker, cpus_per_worker=cpus_per_worker, compile=compile,
                        image_column=image_column, label_column=label_column, split_column=split_column,
                        label_field=label_field, head_start=early)
    finally:
        if early is not None:
            early.close()
    console.print(f"inputs vs store: {store.manifest['last_run']['line']}", highlight=False)
    _print_summary(store.summary(), brief=True)


def _print_summary(summary: dict, brief: bool = False) -> None:
    pending = f", {summary['pending']} pending" if summary.get("pending") else ""
    console.print(f"[bold]{summary['path']}[/]: {summary['rows']} images, [green]{summary['ok']} ok[/], "
                  f"[red]{summary['failed']} failed[/]{pending}; backbone {summary['backbone']}, layers "
                  + ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in summary["layers"].items()), highlight=False)
    if not brief:
        console.print(f"weights: {summary['weights']}; pool: {summary['pool']}; complete: {summary['complete']}")
        console.print("per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()))
        console.print("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    for error in summary["errors"][: 20 if brief else None]:
        console.print(f"  [red]{error['status']}[/] {error['path']}: {error['error']}", highlight=False)
    if summary.get("pending"):
        console.print(f"{summary['pending']} rows are not extracted yet (an unfinished run): run the same "
                      "`featx extract` again to finish them", highlight=False)
    if brief and len(summary["errors"]) > 20:
        console.print(f"  … {len(summary['errors']) - 20} more; see `featx info {summary['path']}`")


@command("info")
def info_cmd(artifact: Path = typer.Argument(..., help="A feature store, model or index folder."),
             as_json: bool = typer.Option(False, "--json")):
    """Summarise a store (config, counts, errors, fingerprint) or a model / index (its source store,
    the fingerprint it was built on, and whether the store still matches)."""
    from featx.info import describe_artifact

    summary = describe_artifact(artifact)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
    elif summary["kind"] == "store":
        _print_summary(summary)
        console.print(f"fingerprint: {summary['fingerprint']}; last re-run: {summary['last_changes']}", highlight=False)
    else:
        for key, value in summary.items():
            console.print(f"{key}: {value}", highlight=False)


@command("verify")
def verify_cmd(store: Path):
    """Check every file's sha256 and shape; exit 1 on any mismatch."""
    from featx.store import FeatureStore

    problems = FeatureStore.open(store).verify()
    for problem in problems:
        err_console.print(f"[red]✗[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {store}: every file matches its recorded sha256 and shape")

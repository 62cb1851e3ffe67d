"""The command line: a thin layer over the API. Each command calls one API function; a
FeatxError becomes its message on stderr and exit code 2."""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from featx.errors import FeatxError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Frozen CNN features for shallow classifiers, retrieval and 2-D maps.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _friendly(fn):
    """Turn featx errors into a one-line message and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatxError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def command(name: str):
    def register(fn):
        return app.command(name)(_friendly(fn))

    return register


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


# --- backbones and layers ----------------------------------------------------------------------

@command("models")
def models_cmd(pattern: Optional[str] = typer.Argument(None, help="Shell pattern, e.g. 'mobilenet*' or 'timm:resnet*'.")):
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
def layers_cmd(model: str = typer.Argument("efficientnet_lite0"),
               image_size: Optional[int] = typer.Option(None, help="Input size; default: the weights' own.")):
    """Print every addressable layer of MODEL with its output shape; mark the default."""
    from featx.api import describe_layers

    rows = describe_layers(model, image_size=image_size)
    table = Table("layer", "output shape", "")
    for row in rows:
        table.add_row(row["layer"], "×".join(map(str, row["shape"])), "default" if row["default"] else "")
    console.print(table)


# --- extraction --------------------------------------------------------------------------------

@command("extract")
def extract_cmd(
    inputs: List[str] = typer.Argument(..., help="Folders, CSV/Parquet manifests, image files or globs."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder."),
    model: str = typer.Option("efficientnet_lite0", "--model", "-m"),
    weights: str = typer.Option("default", help="'default', 'random' or a local state dict file."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", "-l", help="Repeat for several layers; default: pooled penultimate."),
    pool: str = typer.Option("avg", help="avg|max|avgmax|gem|flatten"),
    image_size: Optional[int] = typer.Option(None, help="Override the weights' crop size."),
    tta: int = typer.Option(1, help="Average N deterministic views (1..10)."),
    batch_size: int = typer.Option(32),
    workers: Optional[int] = typer.Option(None, help="Decoding worker processes; default: cores - 1."),
    device: str = typer.Option("auto", help="auto|cpu|cuda|mps"),
    amp: str = typer.Option("none", help="none|bf16|fp16 (CUDA only)"),
    dtype: str = typer.Option("float32", help="float32|float16 for stored features"),
    shard_size: int = typer.Option(4096, help="Rows per shard."),
    overwrite: bool = typer.Option(False, help="Replace an existing store."),
    append: bool = typer.Option(False, help="Add files whose content is new to an existing store."),
):
    """Extract features of images into a resumable feature store."""
    from featx.extract import extract

    store = extract(inputs, out, model=model, weights=weights, layers=layer or None, pool=pool, image_size=image_size,
                    tta=tta, batch_size=batch_size, workers=workers, device=device, amp=amp, dtype=dtype,
                    shard_size=shard_size, overwrite=overwrite, append=append)
    _print_summary(store.summary(), brief=True)


def _print_summary(summary: dict, brief: bool = False) -> None:
    console.print(f"[bold]{summary['path']}[/]: {summary['rows']} images, [green]{summary['ok']} ok[/], "
                  f"[red]{summary['failed']} failed[/]; backbone {summary['backbone']}, layers "
                  + ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in summary["layers"].items()), highlight=False)
    if not brief:
        console.print(f"weights: {summary['weights']}; pool: {summary['pool']}; complete: {summary['complete']}")
        console.print("per class: " + ", ".join(f"{k} {v}" for k, v in summary["per_class"].items()))
        console.print("per split: " + ", ".join(f"{k} {v}" for k, v in summary["per_split"].items()))
    for error in summary["errors"][: 20 if brief else None]:
        console.print(f"  [red]{error['status']}[/] {error['path']}: {error['error']}", highlight=False)
    if brief and len(summary["errors"]) > 20:
        console.print(f"  … {len(summary['errors']) - 20} more; see `featx info {summary['path']}`")


@command("info")
def info_cmd(store: Path, as_json: bool = typer.Option(False, "--json")):
    """Summarise a feature store: config, counts per class and split, errors."""
    from featx.store import FeatureStore

    summary = FeatureStore.open(store).summary()
    if as_json:
        console.print_json(json.dumps(summary, default=str))
    else:
        _print_summary(summary)


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


if __name__ == "__main__":
    app()

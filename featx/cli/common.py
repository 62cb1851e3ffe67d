"""What every command shares: the typer app, the consoles, featx errors as exit code 2, options
derived from `featx.options`, and printing a table of results."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from featx.errors import FeatxError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Frozen CNN features for shallow classifiers, retrieval and 2-D maps.")
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def friendly(fn):
    """Turn featx errors into a one-line message and exit code 2, with no traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FeatxError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # a full disk or read-only filesystem met outside featx's own writers
            from featx.io.atomic import disk_error

            error = disk_error(exc, exc.filename or Path.cwd())
            if error is None:
                raise
            err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def option(model, field: str, *decls: str, **extra):
    """A typer option whose default, bounds and help come from the step's option model in
    featx.options (its choices come from the Literal type the parameter is annotated with): one
    definition feeds the Python API, the CLI, recipes and the HTTP bodies."""
    import annotated_types

    info = model.model_fields[field]
    kwargs = {"help": info.description}
    for bound in info.metadata:
        if isinstance(bound, annotated_types.Ge):
            kwargs["min"] = bound.ge
        elif isinstance(bound, annotated_types.Le):
            kwargs["max"] = bound.le
    kwargs.update(extra)
    default = info.get_default(call_default_factory=True)
    return typer.Option(None if default in ([], {}) else default, *decls, **kwargs)


def validated(model, given: dict, flags: dict[str, str] | None = None):
    """The option model built from a command's parameters (named as the model's fields); paths
    become strings, an absent list its default. Errors name the command-line option."""
    from pydantic import ValidationError

    values = {name: str(value) if isinstance(value, Path) else value for name, value in given.items()
              if name in model.model_fields and value is not None}
    try:
        return model(**values)
    except ValidationError as exc:
        flags = flags or {}
        raise FeatxError("; ".join(f"{flags.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: "
                                   f"{e['msg']}" for e in exc.errors())) from None


def command(name: str):
    def register(fn):
        return app.command(name)(friendly(fn))

    return register


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")):
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def emit_frame(frame, output_format: str) -> None:
    """A DataFrame as a table, CSV or JSON on stdout."""
    if output_format == "csv":
        sys.stdout.write(frame.to_csv(index=False))
    elif output_format == "json":
        sys.stdout.write(frame.to_json(orient="records", indent=2) + "\n")
    else:
        table = Table()
        for column in frame.columns:
            table.add_column(str(column), overflow="fold", min_width=12 if column in ("path", "query") else None)
        for row in frame.itertuples(index=False):
            table.add_row(*[_cell(v) for v in row])
        console.print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4f}"
    if isinstance(value, list):
        return ", ".join(f"{k} {v:.3f}" for k, v in value)
    return "" if value is None else str(value)


def maybe(value, fmt: str) -> str:
    return "–" if value is None or value != value else fmt.format(value)

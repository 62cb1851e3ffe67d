"""`featx run`: a recipe's steps, skipping unchanged ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from featx.cli.common import command, console

# --- recipes -----------------------------------------------------------------------------------

@command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="A recipe, e.g. pipelines/demo.yaml"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override an option: STEP.KEY=VALUE"),
    force: bool = typer.Option(False, help="Run every step, even unchanged ones."),
):
    """Run a recipe: extract → train-shallow → index → project → report, skipping unchanged steps."""
    from featx.recipes.run import run_recipe

    produced = run_recipe(recipe, set_ or [], force=force,
                          say=lambda m: console.print(m, highlight=False, markup=False))
    _print_run_summary(produced)
    console.print("[bold]results[/]")
    for name in ("report", "audit", "search", "projection", "model", "index", "store"):
        if name in produced:
            console.print(f"  {name}: {produced[name]}", highlight=False)




def _print_run_summary(produced: dict) -> None:
    if "audit" in produced and (produced["audit"].parent / "audit.json").is_file():
        summary = json.loads((produced["audit"].parent / "audit.json").read_text())["summary"]
        console.print("audit: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["counts"].items())
                      + f"; {summary['enough_data']['sentence']}", highlight=False)
    if "model" in produced and (produced["model"] / "report" / "report.json").is_file():
        report = json.loads((produced["model"] / "report" / "report.json").read_text())
        console.print(f"classifier: accuracy {report['accuracy']:.4f}, balanced accuracy "
                      f"{report['balanced_accuracy']:.4f}, macro F1 {report['macro_f1']:.4f} ({report['evaluation']})",
                      highlight=False)
    if "index" in produced and (produced["index"] / "evaluation.json").is_file():
        metrics = json.loads((produced["index"] / "evaluation.json").read_text())
        if "precision@1" in metrics:
            console.print(f"retrieval: precision@1 {metrics['precision@1']:.4f}, map@{metrics['k']} "
                          f"{metrics['map@k']:.4f} (leave-one-out)", highlight=False)

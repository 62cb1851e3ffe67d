"""Metrics and reports: JSON for machines, Markdown for people, PNG plots for both."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def classification_metrics(y_true, y_pred, classes: list[str]) -> dict:
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for c, p, r, f, s in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def pyplot():
    """matplotlib's pyplot on the Agg backend: plots are written to files, never shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix, classes: list[str], path: Path, title: str) -> Path:
    plt = pyplot()
    matrix = np.asarray(matrix)
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black", fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_learning_curve(points: list[dict], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [p["per_class"] for p in points]
    ax.errorbar(xs, [p["accuracy"] for p in points], yerr=[p["std"] for p in points], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("training images per class")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _with_spread(report: dict, key: str) -> str:
    std = report.get(f"{key}_std")
    return f"{report[key]:.4f} ± {std:.4f}" if std is not None else f"{report[key]:.4f}"


def representation_lines(chosen: dict | None) -> list[str]:
    """The choice of representation and classifier, and the table of what was tried."""
    if not chosen or not chosen.get("tried"):
        return []
    lines = ["", "## Representation", "",
             f"Chosen: **{chosen['representation']}** with **{chosen['classifier']}** (reads "
             f"{', '.join(chosen['layers'])}), by {chosen['metric']}, in {chosen['seconds']:g} s. Each round scores "
             "the candidates left on more rows; the winner is then tuned on every training row.", "",
             "| round | rows | representation | classifier | inner CV score | seconds |", "|---|---|---|---|---|---|"]
    for row in chosen["tried"]:
        score = "failed" if row["score"] is None else f"{row['score']:.4f}" + (
            f" ± {row['std']:.4f}" if row["std"] is not None else "")
        lines.append(f"| {row['round']} | {row['rows']} | {row['representation']} | {row['classifier']} | {score} "
                     f"| {row['seconds']:g} |")
    return lines


def baseline_lines(baseline: dict | None) -> list[str]:
    """The raw-pixel baseline's sentence, and its warning when the features do not beat it."""
    if not baseline:
        return []
    lines = ["", "## Raw-pixel baseline", "", baseline["sentence"]]
    if baseline.get("warning"):
        lines += ["", f"> **Warning:** {baseline['warning']}"]
    return lines


def write_report(report: dict, folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [f"# {title}", "", f"Evaluation: {report['evaluation']}", ""]
    if report.get("spread"):
        lines += [f"± is the {report['spread']}.", ""]
    lines += ["| metric | value |", "|---|---|"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1"):
        lines.append(f"| {key} | {_with_spread(report, key)} |")
    for key in ("n_train", "n_eval"):
        lines.append(f"| {key} | {report[key]} |")
    lines += ["", "| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for name, row in report["per_class"].items():
        lines.append(f"| {name} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |")
    lines += representation_lines(report.get("representation")) + baseline_lines(report.get("baseline"))
    tuning = report.get("tuning") or {}
    if tuning.get("enabled"):
        lines += ["", "## Tuning", "",
                  f"{tuning['label']} chosen by inner {tuning['inner_folds']}-fold cross-validation "
                  f"({tuning['scoring']}) on {tuning['tune_rows']} training rows: **{tuning['chosen']:g}** "
                  f"(inner CV score {tuning['inner_cv_score']:.4f}; grid "
                  f"{', '.join(f'{v:g}' for v in tuning['grid'])})."]
        if tuning.get("chosen_per_outer_fold"):
            lines.append(f"Chosen in each outer fold: {', '.join(f'{v:g}' for v in tuning['chosen_per_outer_fold'])}.")
        lines += ["", "| " + tuning["label"] + " | train | cross-validation |", "|---|---|---|"]
        for p in tuning["validation_curve"]:
            if p.get("skipped"):
                lines.append(f"| {p['value']:g} | not walked (no gain over the last points) | |")
            elif p["cv_mean"] is None:
                lines.append(f"| {p['value']:g} | failed | failed |")
            else:
                lines.append(f"| {p['value']:g} | {p['train_mean']:.4f} ± {p['train_std']:.4f} "
                             f"| {p['cv_mean']:.4f} ± {p['cv_std']:.4f} |")
        lines += ["", "![validation curve](validation_curve.png)"]
    elif tuning:
        lines += ["", "## Tuning", "", f"off: fixed {tuning['label']} = {tuning['fixed']}"]
    if report.get("reduction"):
        lines += ["", "## Reduction", "", "```json", json.dumps(report["reduction"], indent=2), "```"]
    if report.get("warnings"):
        lines += ["", "## Warnings", "", "| count | category | message |", "|---|---|---|"]
        lines += [f"| {w['count']} | {w['category']} | {w['message'].replace('|', '/')} |" for w in report["warnings"]]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "![learning curve](learning_curve.png)", "",
              "## Config", "", "```json", json.dumps(report["config"], indent=2, default=str), "```", ""]
    (folder / "report.md").write_text("\n".join(lines))

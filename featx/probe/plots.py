"""The probe's two plots as PNG bytes: score against layer depth (one line per backbone and
pooling) and score against cost."""

from __future__ import annotations

import io

import pandas as pd

from featx.learn.metrics import pyplot


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return buffer.getvalue()


def score_vs_depth(frame: pd.DataFrame, metric: str = "balanced_accuracy") -> bytes:
    frame = frame[frame[metric].notna()]  # the candidates scored in full
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (backbone, how), group in frame.groupby(["backbone", "pool"], sort=True):
        group = group.sort_values("depth")
        ax.errorbar(group["depth"], group[metric], yerr=group[f"{metric}_std"], marker="o", capsize=3,
                    label=f"{backbone} / {how}")
    ax.set_xlabel("layer depth (0 = input, 1 = output)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("score against layer depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def score_vs_cost(frame: pd.DataFrame, metric: str = "balanced_accuracy") -> bytes:
    frame = frame[frame[metric].notna()]
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    markers = dict(zip(sorted(frame["pool"].unique()), "osD^v<>"))
    for (backbone, how), group in frame.groupby(["backbone", "pool"], sort=True):
        label = f"{backbone} / {how}"
        axes[0].scatter(group["forward_img_per_s"], group[metric], marker=markers[how], label=label)
        axes[1].scatter(group["dim"], group[metric], marker=markers[how], label=label)
    axes[0].set_xlabel("images/s of the forward pass up to the layer (this machine)")
    axes[1].set_xlabel("vector size (floats per image)")
    axes[0].set_ylabel(metric.replace("_", " "))
    from matplotlib.ticker import ScalarFormatter

    for ax in axes:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("score against cost", fontsize=10)
    return _png(fig)

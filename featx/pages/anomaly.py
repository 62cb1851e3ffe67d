"""The anomaly page: one self-contained HTML file with the threshold and how it was set, the
evaluation on held-out images (AUROC and AUPRC with their spread, the confusion at the threshold,
pixel AUROC), the score histograms of normal and anomalous images, the ROC curve, and the most and
least anomalous held-out images (with their heatmaps for a patch-level model)."""

from __future__ import annotations

import io

import numpy as np

from featx.io.thumbnails import png_uri, thumbnail_uri
from featx.pages.render import render_page

SHOWN = 12  # images in each of the most / least anomalous strips


def _figure_uri(fig) -> str:
    from featx.learn.metrics import pyplot

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    pyplot().close(fig)
    return png_uri(buffer.getvalue())


def _histogram_uri(held, threshold: float) -> str | None:
    if held is None or not len(held):
        return None
    from featx.learn.metrics import pyplot

    fig, ax = pyplot().subplots(figsize=(6, 3.4))
    scores = held["score"].to_numpy(dtype=float)
    bins = np.linspace(scores.min(), scores.max(), 40) if scores.max() > scores.min() else 10
    for anomalous, name, colour in ((False, "normal", "C0"), (True, "anomalous", "C3")):
        part = scores[held["anomalous"].to_numpy(dtype=bool) == anomalous]
        if len(part):
            ax.hist(part, bins=bins, alpha=0.6, color=colour, label=f"{name} ({len(part)})")
    ax.axvline(threshold, color="k", linestyle="--", label="threshold")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("held-out images")
    ax.legend(fontsize=8)
    return _figure_uri(fig)


def _roc_uri(evaluation: dict | None) -> str | None:
    if not evaluation or "roc" not in evaluation:
        return None
    from featx.learn.metrics import pyplot

    fig, ax = pyplot().subplots(figsize=(3.8, 3.6))
    ax.plot(evaluation["roc"]["fpr"], evaluation["roc"]["tpr"], color="C3")
    ax.plot([0, 1], [0, 1], color="#aaa", linestyle=":")
    ax.axvline(evaluation["fpr_at_threshold"], color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(f"AUROC {evaluation['auroc']:.3f}", fontsize=10)
    return _figure_uri(fig)


def _pictures(model, positions: list[int]) -> list[dict]:
    """A thumbnail per held-out row, or its heatmap overlay for a patch-level model."""
    held = model.held_out
    out = []
    overlay = None
    if model.grids is not None:
        from featx.anomaly.heatmap import overlay_png

        extractor = model.extractor(device="cpu")
        overlay = (extractor, overlay_png)
    for i in positions:
        row = held.iloc[i]
        picture = None
        if overlay is not None:
            try:
                with open(row["path"], "rb") as f:
                    data = f.read()
                heat = model.heatmaps_of(model.grids[i:i + 1])[0]
                picture = png_uri(overlay[1](data, heat, model.record, overlay[0].backbone.preprocess,
                                             overlay[0].decode))
            except (OSError, ValueError):
                picture = None
        out.append({"uri": picture or thumbnail_uri(row["path"], 160), "path": row["path"], "score": row["score"],
                    "label": row["label"], "anomalous": bool(row["anomalous"]),
                    "above": bool(row["above_threshold"])})
    return out


def render_anomaly_page(model, title: str = "featx anomaly") -> str:
    record = model.record
    held = model.held_out
    order = np.argsort(-held["score"].to_numpy(dtype=float), kind="stable") if held is not None else np.array([], int)
    most = [int(i) for i in order[:SHOWN]]
    least = [int(i) for i in order[::-1][:SHOWN]]
    return render_page("anomaly.html", title=title, record=record, evaluation=record.get("evaluation") or {},
                       histogram=_histogram_uri(held, model.threshold), roc=_roc_uri(record.get("evaluation")),
                       most=_pictures(model, most), least=_pictures(model, least))

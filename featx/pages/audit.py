"""The audit page: one self-contained HTML file (thumbnails as data URIs, no outside resources),
suspects grouped by issue kind with their nearest neighbours, sortable by column."""

from __future__ import annotations

import io
import math

from featx.io.thumbnails import png_uri, thumbnail_uri
from featx.pages.render import render_page

MAX_PER_KIND = 150  # the page stays light; suspects.csv has them all
HOW = {
    "label_issue": "cleanlab on out-of-fold calibrated probabilities: the given label is unlikely",
    "leakage": "a held-out image is a (near-)copy of an image in another split: its score is optimistic",
    "conflicting_duplicate": "(near-)copies of each other with different labels",
    "duplicate": "(near-)copies within one class: they count twice",
    "outlier": "far from the other images (distance to the k-th nearest): wrong kind of image, blank or broken frames",
}


def _curve_png(data: dict) -> str | None:
    """The learning curve, the fitted power law and the doubled-data estimate with its interval."""
    if not data.get("available"):
        return None
    from featx.learn.metrics import pyplot

    plt = pyplot()
    points = data["points"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.errorbar([p["n"] for p in points], [p["accuracy"] for p in points], yerr=[p["std"] for p in points],
                marker="o", capsize=3, linestyle="none", label="measured")
    n_now, b = data["n_now"], data["exponent"]
    error_now = (1 - 2.0 ** -b) and data["gain"] / (1 - 2.0 ** -b)
    xs = [n_now / 8 * 1.1 ** i for i in range(int(math.log(16) / math.log(1.1)) + 1)]
    ax.plot(xs, [data["accuracy_now"] + error_now * (1 - (x / n_now) ** -b) for x in xs], label="power-law fit")
    low, high = data["gain_interval_90"]
    ax.errorbar([2 * n_now], [data["predicted_accuracy"]], marker="s", color="C3", capsize=4, label="doubled (90%)",
                yerr=[[data["gain"] - low], [high - data["gain"]]])
    ax.set_xscale("log")
    ax.minorticks_off()
    ticks = sorted({p["n"] for p in points} | {2 * n_now})
    ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
    ax.set_xlabel("training images")
    ax.set_ylabel("held-out accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return png_uri(buffer.getvalue())


def render_audit_page(result, title: str = "featx audit") -> str:
    from featx.audit.audit import KIND_TITLES, KINDS, NEIGHBOURS_SHOWN

    paths = result.scores["path"].to_numpy(dtype=object)
    labels = result.scores["label"].where(result.scores["label"].notna(), None).to_numpy(dtype=object)
    splits = result.scores["split"].where(result.scores["split"].notna(), None).to_numpy(dtype=object)
    thumbs: dict[str, str] = {}

    def thumb(path: str, size: int) -> str:
        key = f"{size}:{path}"
        if key not in thumbs:
            thumbs[key] = thumbnail_uri(path, size)
        return thumbs[key]

    position = {int(r): i for i, r in enumerate(result.scores["row_id"].to_numpy())}
    groups, hidden = {}, {}
    for kind in KINDS:
        rows = result.suspects[result.suspects["kind"] == kind]
        hidden[kind] = len(rows) > MAX_PER_KIND
        groups[kind] = []
        for row in rows.head(MAX_PER_KIND).itertuples():
            here = position[row.row_id]
            groups[kind].append({
                "thumb": thumb(row.path, 96), "path": row.path, "score": row.score, "given_label": row.given_label,
                "suggested_label": row.suggested_label, "split": row.split, "detail": row.detail,
                "neighbours": [{"thumb": thumb(paths[j], 72), "similarity": s, "label": labels[j], "split": splits[j]}
                               for j, s in result.neighbours.get(here, [])[:NEIGHBOURS_SHOWN]]})
    return render_page("audit.html", title=title, summary=result.summary, kinds=KINDS, titles=KIND_TITLES, how=HOW,
                       groups=groups, hidden=hidden, curve_png=_curve_png(result.summary["enough_data"]))

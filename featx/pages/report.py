"""The run report: one self-contained HTML page (images embedded) that answers how well the
features classify, which images look alike, and what the data looks like."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from featx.io.thumbnails import escape, png_uri
from featx.pages.search import STYLE as SEARCH_STYLE
from featx.pages.search import search_blocks
from featx.store import FeatureStore

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}h2{border-bottom:2px solid #1f77b4;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}
.muted{color:#777;font-size:13px}.imgs img{max-width:49%;vertical-align:top}.big{max-width:100%}
"""


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _img(path: Path, css: str = "") -> str:
    return f'<img class="{css}" src="{png_uri(path.read_bytes())}">' if path.is_file() else ""


def _spread(report: dict, key: str) -> str:
    std = report.get(f"{key}_std")
    return f"{report[key]:.4f} ± {std:.4f}" if std is not None else f"{report[key]:.4f}"


def _choice_html(report: dict) -> str:
    """The representation train-shallow chose, and the raw-pixel baseline's sentence and warning."""
    parts = []
    chosen = report.get("representation") or {}
    if chosen.get("tried"):
        parts.append(f"<p>Representation chosen by inner cross-validation on the training rows: "
                     f"<b>{escape(chosen['representation'])}</b> with <b>{escape(chosen['classifier'])}</b> (reads "
                     f"{escape(', '.join(chosen['layers']))}; {len(chosen['tried'])} candidates scored).</p>")
    baseline = report.get("baseline") or {}
    if baseline.get("sentence"):
        parts.append(f"<p>{escape(baseline['sentence'])}</p>")
    if baseline.get("warning"):
        parts.append(f"<p class='warn'><b>Warning:</b> {escape(baseline['warning'])}</p>")
    return "".join(parts)


def _tuning_html(tuning: dict, warnings: list[dict]) -> str:
    parts = []
    if tuning.get("enabled"):
        per_fold = tuning.get("chosen_per_outer_fold")
        parts.append(f"<p>{escape(tuning['label'])} chosen by inner {tuning['inner_folds']}-fold cross-validation on "
                     f"the training rows: <b>{tuning['chosen']:g}</b> (grid {tuning['grid'][0]:g} … "
                     f"{tuning['grid'][-1]:g}"
                     + (f"; per outer fold: {', '.join(f'{v:g}' for v in per_fold)}" if per_fold else "") + ").</p>")
    elif tuning:
        parts.append(f"<p>Not tuned: fixed {escape(tuning['label'])} = {escape(tuning['fixed'])}.</p>")
    if warnings:
        parts.append("<p>Warnings while training:</p>" + _table([(w["count"], w["category"],
                                                                  w["message"]) for w in warnings],
                                                              ("count", "category", "message")))
    return "".join(parts)


def render_report(title: str, store: FeatureStore, model_dir: Path | None, index_dir: Path | None,
                  search_results: pd.DataFrame | None, projection_dir: Path | None,
                  audit_dir: Path | None = None, anomaly_dir: Path | None = None) -> str:
    summary = store.summary()
    config = store.config
    parts = [f"<h1>{escape(title)}</h1><p class='muted'>featx run report — store {escape(summary['path'])}</p>"]

    # dataset
    splits = sorted(summary["per_split"])
    meta = store.meta.assign(label=store.meta["label"].fillna("(none)"), split=store.meta["split"].fillna("(none)"))
    crosstab = pd.crosstab(meta["label"], meta["split"])
    rows = [(label, *[int(crosstab.loc[label, s]) if s in crosstab.columns else 0 for s in splits],
             int(crosstab.loc[label].sum())) for label in crosstab.index]
    parts.append("<h2>Dataset</h2>" + f"<p>{summary['rows']} images: {summary['ok']} ok, {summary['failed']} "
                                      f"failed.</p>"
                 + _table(rows, ("class", *splits, "total")))
    if summary["errors"]:
        parts.append("<h3>Failed files</h3>" + _table([(e["path"], e["status"],
                                                        e["error"]) for e in summary["errors"][:50]],
                                                     ("file", "code", "message")))

    # extractor
    pre = config.get("preprocess", {})
    parts.append("<h2>Extractor</h2>" + _table([
        ("backbone", config.get("backbone")), ("weights", config.get("weights_id")),
        ("weights sha256", config.get("weights_sha256")), ("layers", ", ".join(config.get("layers", []))),
        ("feature size", ", ".join(f"{k}: {'×'.join(map(str, v))}" for k, v in summary["layers"].items())),
        ("pooling", config.get("pool")), ("TTA views", config.get("tta")),
        ("preprocessing", f"resize {pre.get('resize_size')}, crop {pre.get('crop_size')}, {pre.get('interpolation')}, "
                          f"mean {pre.get('mean')}, std {pre.get('std')}")]))

    # classifier
    if model_dir is not None and (model_dir / "report" / "report.json").is_file():
        report = json.loads((model_dir / "report" / "report.json").read_text())
        options = report["config"]
        parts.append("<h2>Classifier</h2>" + f"<p>{escape(options.get('classifier'))}, normalise "
                     f"{escape(options.get('normalize'))}, reduce {escape(options.get('reduce'))} — "
                     f"{escape(report['evaluation'])}.</p>"
                     + _table([("accuracy", _spread(report, "accuracy")),
                               ("balanced accuracy", _spread(report, "balanced_accuracy")),
                               ("macro F1", _spread(report, "macro_f1")), ("training images", report["n_train"]),
                               ("evaluated images", report["n_eval"])])
                     + (f"<p class='muted'>± is the {escape(report['spread'])}.</p>" if report.get("spread") else "")
                     + _choice_html(report) + _tuning_html(report.get("tuning") or {}, report.get("warnings") or [])
                     + _table([(c, v["precision"], v["recall"], v["f1"], v["support"]) for c,
                               v in report["per_class"].items()],
                              ("class", "precision", "recall", "F1", "support"))
                     + "<div class='imgs'>" + _img(model_dir / "report" / "confusion_matrix.png")
                     + _img(model_dir / "report" / "learning_curve.png")
                     + _img(model_dir / "report" / "validation_curve.png") + "</div>")

    parts += [section(folder) for section, folder, record in ((audit_section, audit_dir, "audit.json"),
                                                              (anomaly_section, anomaly_dir, "anomaly.json"))
              if folder is not None and (folder / record).is_file()]

    # retrieval
    if index_dir is not None and (index_dir / "evaluation.json").is_file():
        metrics = json.loads((index_dir / "evaluation.json").read_text())
        info = json.loads((index_dir / "index.json").read_text())
        parts.append("<h2>Retrieval</h2>" + f"<p>{escape(info['kind'])} index ({escape(info['factory'])}), "
                     f"{escape(info['metric'])}, {info['ntotal']} images. Leave-one-out over the labelled images:</p>"
                     + _table([(k, v) for k, v in metrics.items()]))
        if search_results is not None and len(search_results):
            labels = dict(zip(store.paths, store.labels))
            parts.append("<h3>Sample queries and their nearest neighbours</h3>" + search_blocks(search_results, labels))

    # projection
    if projection_dir is not None and (projection_dir / "projection.json").is_file():
        projection = json.loads((projection_dir / "projection.json").read_text())
        quality = projection["quality"]
        parts.append("<h2>Map of the features</h2>"
                     + _table([(k, v) for k, v in {**projection["info"], **quality}.items()])
                     + _img(projection_dir / "projection.png", "big")
                     + "<p>Interactive version (zoom, pan, thumbnails): <a href='projection/projection.html'>"
                       "projection/projection.html</a></p>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{SEARCH_STYLE}{STYLE}</style></head><body>{''.join(parts)}</body></html>")


AUDIT_SHOWN = 12


def audit_section(audit_dir: Path) -> str:
    """Counts per issue, the threshold, the enough-data sentence and the top suspects; the full
    sortable page is audit/audit.html."""
    from featx.audit.audit import KIND_TITLES, KINDS
    from featx.io.thumbnails import thumbnail_uri

    record = json.loads((audit_dir / "audit.json").read_text())
    summary, suspects = record["summary"], record["suspects"]
    near = summary["near_duplicates"]
    top = sorted(suspects, key=lambda s: (KINDS.index(s["kind"]), -s["score"]))[:AUDIT_SHOWN]
    rows = "".join(f"<tr><td><img src='{thumbnail_uri(s['path'], 64)}'></td><td>{escape(KIND_TITLES[s['kind']])}</td>"
                   f"<td>{escape(s['path'])}</td><td>{s['score']:.3f}</td><td>{escape(s['given_label'])}</td>"
                   f"<td>{escape(s['suggested_label'])}</td></tr>" for s in top)
    return ("<h2>Data audit</h2>"
            + f"<p>{summary['flagged_rows']} of {summary['ok_rows']} images flagged. Nothing was changed: the full, "
              "sortable list with nearest neighbours is <a href='audit/audit.html'>audit/audit.html</a> "
              "(and audit/suspects.csv).</p>"
            + _table([(KIND_TITLES[k], summary["counts"][k]) for k in KINDS], ("issue", "images"))
            + f"<p>Near-duplicates: cosine ≥ {near['threshold']:.4f} ({escape(near['method'])}: "
              f"{escape(near['rule'])}).</p>"
            + f"<p><b>Enough data?</b> {escape(summary['enough_data']['sentence'])}</p>"
            + ("<table><tr><th></th><th>issue</th><th>path</th><th>score</th><th>given</th><th>suggested</th></tr>"
               f"{rows}</table>" if top else ""))


def anomaly_section(anomaly_dir: Path) -> str:
    """The anomaly model: what it learnt from, its threshold and, when anomalies were held out, its
    evaluation; the full page is anomaly/anomaly.html."""
    record = json.loads((anomaly_dir / "anomaly.json").read_text())
    threshold, evaluation = record["threshold"], record.get("evaluation") or {}
    rows = [("model", f"{record['mode']} level, layers {', '.join(record['layers'])}"),
            ("normal images", f"{record['normal']['rows']} ({record['normal']['rule']})"),
            ("memory", f"{record['memory']['vectors']} vectors"),
            ("threshold", f"{threshold['threshold']:.6g}: false-positive rate {threshold['fpr_held_out']:.3g} "
                          f"(target {threshold['fpr_target']:.3g}) on {threshold['normals']} held-out normal images, "
                          f"{threshold['calibration']}")]
    if "auroc" in evaluation:
        c = evaluation["confusion"]
        rows += [("image AUROC", f"{evaluation['auroc']:.4f} ± {evaluation['auroc_std']:.4f}"),
                 ("image AUPRC", f"{evaluation['auprc']:.4f} ± {evaluation['auprc_std']:.4f}"),
                 ("at the threshold", f"{c['true_positive']} of {evaluation['anomalous']} anomalies caught, "
                                      f"{c['false_positive']} of {evaluation['normal']} normal images flagged")]
    if (evaluation.get("pixel") or {}).get("auroc") is not None:
        rows.append(("pixel AUROC", f"{evaluation['pixel']['auroc']:.4f}"))
    return ("<h2>Anomaly detection</h2>" + _table(rows)
            + "<p>Histograms, ROC curve and the most and least anomalous images: "
              "<a href='anomaly/anomaly.html'>anomaly/anomaly.html</a></p>")

"""The probe page: one self-contained HTML file made from what `featx probe` wrote into PROBE_DIR
(probe.json, winner.yaml and the two plots), so it can be made again from the folder alone."""

from __future__ import annotations

import json
from pathlib import Path

from featx.pages.render import render_page

PLOTS = ("score_vs_depth.png", "score_vs_cost.png")
RECIPE = "winner.yaml"


def render_probe_page(out: str | Path) -> str:
    out = Path(out)
    report = json.loads((out / "probe.json").read_text())
    plots = {name: (out / name).read_bytes() for name in PLOTS}
    return render_page("probe.html", title="featx probe: " + ", ".join(sorted(report["domain_shift"])),
                       n_images=report["n_images"], classes=report["classes"], protocol=report["protocol"],
                       candidates=report["candidates"], skipped=report["skipped"], seconds=report["seconds"],
                       winner=report["winner"], recipe_path=report["recipe"], recipe_text=(out / RECIPE).read_text(),
                       domain_shift=report["domain_shift"], plots=plots, classifier_names=report["classifiers"],
                       held_out=report.get("held_out"), baselines=report.get("baselines"),
                       full=[c for c in report["candidates"] if c.get("classifiers")],
                       screened_out=[c for c in report["candidates"] if not c.get("classifiers")])

"""`featx run RECIPE`: the steps of a recipe, each skipped when its inputs and options did not
change since the last run (the cache key is the step's options and the store manifest)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from featx.errors import ConfigMismatchError
from featx.io import atomic
from featx.options import IndexStep, defaults
from featx.recipes.recipe import Recipe, load_recipe

INDEX_STEP = defaults(IndexStep)

log = logging.getLogger(__name__)

STATE_FILE = ".featx-run.json"


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _input_signature(inputs: list[str]) -> str:
    """Paths, sizes and modification times of the input files: changes when images change."""
    from featx.io.containers import split_member
    from featx.io.sources import scan_inputs

    digest = hashlib.sha256()
    for record in scan_inputs(inputs):
        try:  # an image inside a tar shard or Parquet file changes with its container
            stat = Path((split_member(record.path) or (record.path,))[0]).stat()
            state = f"{stat.st_size}|{stat.st_mtime_ns}"
        except OSError as exc:  # missing, dangling link, loop: the extract step makes it an error row
            state = f"unreadable:{exc.errno}"
        digest.update(f"{record.path}|{record.label}|{record.split}|{record.group}|{state}\n".encode())
    return digest.hexdigest()[:16]


class Runner:
    def __init__(self, recipe: Recipe, force: bool = False, say=print):
        self.recipe = recipe
        self.out = recipe.output
        self.force = force
        self.say = say
        self.state_file = self.out / STATE_FILE
        self.state = json.loads(self.state_file.read_text()) if self.state_file.is_file() and not force else {}
        self.paths = {"store": self.out / "store", "model": self.out / "model", "audit": self.out / "audit",
                      "anomaly": self.out / "anomaly", "index": self.out / "index",
                      "projection": self.out / "projection", "search": self.out / "search.html",
                      "report": self.out / "report.html"}

    def _step(self, name: str, key: str, outputs_exist: bool, work) -> bool:
        if self.state.get(name) == key and outputs_exist:
            self.say(f"[{name}] unchanged, skipped")
            return False
        start = time.perf_counter()
        self.say(f"[{name}] running")
        work()
        self.state[name] = key
        atomic.write_json(self.state_file, self.state)
        self.say(f"[{name}] done in {time.perf_counter() - start:.1f} s")
        return True

    def run(self) -> dict[str, Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        steps = self.recipe.steps
        extract_options = steps["extract"]
        extract_key = _key(extract_options, _input_signature(extract_options["inputs"]))
        store_done = (self.paths["store"] / "manifest.json").is_file() and \
            json.loads((self.paths["store"] / "manifest.json").read_text()).get("complete")
        self._step("extract", extract_key, bool(store_done), self._extract)
        from featx.store import FeatureStore

        manifest_hash = FeatureStore.open(self.paths["store"]).fingerprint  # rows, contents, labels, config
        produced = {"store": self.paths["store"]}
        if "train_shallow" in steps:
            key = _key(steps["train_shallow"], manifest_hash)
            self._step("train_shallow", key, (self.paths["model"] / "model.json").is_file(), self._train)
            produced["model"] = self.paths["model"]
        if "audit" in steps:  # after training: it reads the model's learning curve
            key = _key(steps["audit"], manifest_hash,
                       self.state.get("train_shallow") if "train_shallow" in steps else None)
            self._step("audit", key, (self.paths["audit"] / "audit.json").is_file(), self._audit)
            produced["audit"] = self.paths["audit"] / "audit.html"
        if "anomaly" in steps:
            key = _key(steps["anomaly"], manifest_hash)
            self._step("anomaly", key, (self.paths["anomaly"] / "anomaly.json").is_file(), self._anomaly)
            produced["anomaly"] = self.paths["anomaly"] / "anomaly.html"
        if "index" in steps:
            key = _key(steps["index"], manifest_hash)
            self._step("index", key,
                       (self.paths["index"] / "evaluation.json").is_file() and self.paths["search"].is_file(),
                       self._index)
            produced["index"], produced["search"] = self.paths["index"], self.paths["search"]
        if "project" in steps:
            key = _key(steps["project"], manifest_hash)
            self._step("project", key, (self.paths["projection"] / "projection.json").is_file(), self._project)
            produced["projection"] = self.paths["projection"] / "projection.html"
        if "report" in steps:
            key = _key(steps["report"], {k: v for k, v in self.state.items() if k != "report"})
            self._step("report", key, self.paths["report"].is_file(), self._report)
            produced["report"] = self.paths["report"]
        return produced

    # --- the steps ---
    def _extract(self) -> None:
        from featx.extract.job import extract

        options = dict(self.recipe.steps["extract"])
        inputs = options.pop("inputs")
        try:  # the recipe's inputs are the truth: the store is reconciled with them
            store = extract(inputs, self.paths["store"], **options)
            self.say(f"[extract] inputs vs store: {store.manifest['last_run']['line']}")
        except ConfigMismatchError:
            self.say("[extract] the recipe's extractor changed: replacing the store")
            extract(inputs, self.paths["store"], overwrite=True, **options)

    def _train(self) -> None:
        from featx.learn.classify import train_shallow

        train_shallow(self.paths["store"], out=self.paths["model"], **self.recipe.steps["train_shallow"])

    def _audit(self) -> None:
        from featx.api import audit

        model = self.paths["model"] if "train_shallow" in self.recipe.steps else None
        suspects = audit(self.paths["store"], out=self.paths["audit"], model=model, **self.recipe.steps["audit"])
        summary = suspects.attrs["summary"]
        self.say("[audit] " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in summary["counts"].items()))

    def _anomaly(self) -> None:
        from featx.api import fit_anomaly

        model = fit_anomaly(self.paths["store"], self.paths["anomaly"], **self.recipe.steps["anomaly"])
        evaluation = model.record.get("evaluation") or {}
        self.say(f"[anomaly] threshold {model.threshold:.6g}"
                 + (f", held-out image AUROC {evaluation['auroc']:.4f}" if "auroc" in evaluation else ""))

    def _index(self) -> None:
        from featx.pages.search import render_search_page
        from featx.retrieval.index import build_index

        options = dict(self.recipe.steps["index"])
        k = options.pop("k", INDEX_STEP.k)
        sample = options.pop("sample_queries", INDEX_STEP.sample_queries)
        index = build_index(self.paths["store"], **options)
        index.save(self.paths["index"])
        store = index.store
        if store.meta["label"].notna().sum() >= 2:
            atomic.write_json(self.paths["index"] / "evaluation.json", index.evaluate(k))
        else:
            atomic.write_json(self.paths["index"] / "evaluation.json", {"note": "no labels: nothing to evaluate"})
        results = self._sample_search(index, sample)
        labels = dict(zip(store.paths, store.labels))
        atomic.write_bytes(self.paths["search"], render_search_page(results, f"featx search: {self.recipe.name}",
                                                                    labels).encode())
        results.to_parquet(self.paths["index"] / "sample_search.parquet", index=False)

    @staticmethod
    def _sample_search(index, sample: int):
        ok_rows = np.flatnonzero(index.store.ok)
        rows = np.sort(np.random.default_rng(0).choice(ok_rows, size=min(sample, len(ok_rows)), replace=False))
        return index.search(None, min(6, max(1, len(ok_rows) - 1)), rows=rows, exclude_self=True)

    def _project(self) -> None:
        from featx.api import write_projection
        from featx.maps.project import fit_projection

        options = dict(self.recipe.steps["project"])
        color = options.pop("color", "label")
        coords, placer = fit_projection(self.paths["store"], **options)
        write_projection(coords, self.paths["projection"], color=color, placer=placer)

    def _report(self) -> None:
        import pandas as pd

        from featx.pages.report import render_report
        from featx.store import FeatureStore

        sample = self.paths["index"] / "sample_search.parquet"
        html = render_report(self.recipe.steps["report"].get("title") or f"featx: {self.recipe.name}",
                             FeatureStore.open(self.paths["store"]),
                             self.paths["model"] if "train_shallow" in self.recipe.steps else None,
                             self.paths["index"] if "index" in self.recipe.steps else None,
                             pd.read_parquet(sample) if sample.is_file() else None,
                             self.paths["projection"] if "project" in self.recipe.steps else None,
                             self.paths["audit"] if "audit" in self.recipe.steps else None,
                             self.paths["anomaly"] if "anomaly" in self.recipe.steps else None)
        atomic.write_bytes(self.paths["report"], html.encode())


def run_recipe(file: str | Path, overrides: list[str] | None = None, force: bool = False, say=print) -> dict[str, Path]:
    """Run a recipe; returns the paths of what it produced (store, model, index, search page,
    projection page, report)."""
    recipe = load_recipe(file, overrides)  # every check happens here, before any work
    return Runner(recipe, force=force, say=say).run()

"""Recipes: YAML files that chain extract → train_shallow → audit → index → project → report, validated
completely before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from featx.errors import FeatxError, InputError
from featx.io.sources import is_glob

STEPS = ("extract", "train_shallow", "audit", "index", "project", "report")
_PATH = "path"
# each step's options: the keyword arguments of its API function, with their types
SCHEMA: dict[str, dict[str, tuple]] = {
    "extract": {"inputs": (list, str), "model": (str,), "weights": (str,), "layers": (list,), "pool": (str,),
                "image_size": (int,), "tta": (int,), "batch_size": (int,), "workers": (int,), "device": (str,),
                "amp": (str,), "dtype": (str,), "shard_size": (int,), "decode": (str,),
                "resize": (str,)},
    "train_shallow": {"layer": (str,), "classifier": (str,), "normalize": (str,), "reduce": (str,), "cv": (int,),
                      "val": (str,), "tune": (bool,), "search": (bool,), "balance": (str,), "seed": (int,)},
    "audit": {"layer": (str,), "classifier": (str,), "cv": (int,), "k": (int,), "threshold": (float, int),
              "calibrate": (str,), "outlier_z": (float, int), "outlier_k": (int,), "seed": (int,),
              "write_manifest": (bool,)},
    "index": {"layer": (str,), "kind": (str,), "metric": (str,), "reduce": (str,), "memory_budget": (str, int),
              "nlist": (int,), "pq_m": (int,), "nprobe": (int,), "rerank": (int,), "k": (int,), "sample_queries": (int,)},
    "project": {"layer": (str,), "method": (str,), "dims": (int,), "pre_pca": (int,), "color": (str,),
                "sample": (int,), "seed": (int,), "perplexity": (float, int), "n_neighbors": (int,),
                "min_dist": (float, int)},
    "report": {"title": (str,)},
}
TOP_LEVEL = {"name": (str,), "output": (str,), **{step: (dict, type(None)) for step in STEPS}}
PATH_OPTIONS = {("extract", "inputs"), ("train_shallow", "val")}


@dataclass
class Recipe:
    file: Path
    name: str
    output: Path
    steps: dict[str, dict]  # step -> options, only the steps the recipe names, in pipeline order


def _type_names(types: tuple) -> str:
    return " or ".join("list" if t is list else "mapping" if t is dict else "null" if t is type(None) else t.__name__
                       for t in types)


def _check_type(value, types: tuple, where: str) -> None:
    if isinstance(value, bool) and bool not in types:  # YAML's true is not an int here
        raise InputError(f"{where}: expected {_type_names(types)}, got a boolean ({value!r})")
    if not isinstance(value, types):
        raise InputError(f"{where}: expected {_type_names(types)}, got {type(value).__name__} ({value!r})")


def apply_overrides(data: dict, overrides: list[str], file: Path) -> dict:
    """`--set train_shallow.classifier=logreg`: the value is read as YAML (numbers, booleans, lists)."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"--set '{item}' is not KEY=VALUE (e.g. train_shallow.classifier=logreg)")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        target = data
        for part in parts[:-1]:
            if target.get(part) is None:
                target[part] = {}
            target = target[part]
            if not isinstance(target, dict):
                raise InputError(f"{file}: --set {key}: '{part}' is not a section")
        target[parts[-1]] = yaml.safe_load(raw)
    return data


def load_recipe(file: str | Path, overrides: list[str] | None = None) -> Recipe:
    file = Path(file)
    if not file.is_file():
        raise InputError(f"recipe '{file}' does not exist; the shipped ones are in pipelines/ (e.g. pipelines/demo.yaml)")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"recipe '{file}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"recipe '{file}' must be a mapping of steps; allowed keys: {', '.join(TOP_LEVEL)}")
    data = apply_overrides(data, overrides or [], file)
    for key, value in data.items():
        if key not in TOP_LEVEL:
            raise InputError(f"{file}: unknown key '{key}'; allowed: {', '.join(TOP_LEVEL)}")
        _check_type(value, TOP_LEVEL[key], f"{file}: key '{key}'")
    if "extract" not in data:
        raise InputError(f"{file}: a recipe needs an 'extract' step with 'inputs'")
    base = file.resolve().parent
    steps = {}
    for step in STEPS:
        if step not in data:
            continue
        options = dict(data[step] or {})
        for key, value in options.items():
            if key not in SCHEMA[step]:
                raise InputError(f"{file}: unknown key '{step}.{key}'; allowed: {', '.join(SCHEMA[step])}")
            _check_type(value, SCHEMA[step][key], f"{file}: key '{step}.{key}'")
        steps[step] = options
    _check_extract_choices(steps["extract"], file)
    inputs = steps["extract"].get("inputs")
    if not inputs:
        raise InputError(f"{file}: key 'extract.inputs' is missing; give the image folders, manifests or globs")
    _check_values(steps, file)
    steps["extract"]["inputs"] = [_resolve_input(i, base, file) for i in ([inputs] if isinstance(inputs, str) else inputs)]
    if steps.get("train_shallow", {}).get("val"):
        steps["train_shallow"]["val"] = _resolve_input(steps["train_shallow"]["val"], base, file, key="train_shallow.val")
    name = data.get("name") or file.stem
    output = Path(data.get("output") or f"runs/{name}")
    return Recipe(file, name, output if output.is_absolute() else (base / output).resolve(), steps)


def _check_extract_choices(options: dict, file: Path) -> None:
    """Choices and ranges of the extract step from featx.options (the one definition)."""
    from pydantic import ValidationError

    from featx.options import ExtractOptions

    try:
        ExtractOptions.model_validate({k: v for k, v in options.items() if k != "inputs"})
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InputError(f"{file}: key 'extract.{'.'.join(map(str, error['loc']))}': {error['msg']} "
                         f"(got {error.get('input')!r})") from None


def _resolve_input(value: str, base: Path, file: Path, key: str = "extract.inputs") -> str:
    """Relative paths are relative to the recipe file, so a recipe works from any folder."""
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else base / path
    if not is_glob(value) and not path.exists():
        raise InputError(f"{file}: key '{key}': path '{value}' does not exist (resolved to '{path}'); paths are "
                         "relative to the recipe file")
    return str(path)


# options whose values come from a fixed list: checked when the recipe loads, so a typo in the
# last step fails in a second, not after an hour of extraction
def _choices() -> dict[tuple[str, str], tuple]:
    """From the option models of featx.options (the one definition the CLI and the HTTP bodies use)."""
    from typing import get_args

    from featx.options import AuditOptions, ExtractOptions, IndexOptions, ProjectOptions, TrainShallowOptions

    models = {"extract": ExtractOptions, "train_shallow": TrainShallowOptions, "audit": AuditOptions,
              "index": IndexOptions, "project": ProjectOptions}
    keys = {"extract": ("pool", "device", "amp", "dtype", "decode"), "train_shallow": ("classifier", "normalize", "balance"),
            "audit": ("classifier", "calibrate"), "index": ("kind", "metric"), "project": ("method", "color")}
    return {(step, key): get_args(models[step].model_fields[key].annotation) for step in keys for key in keys[step]}


_REDUCE_FORMS = {"train_shallow": (r"none|pca:(\d+|0?\.\d+)(:whiten)?|pq:\d+", "none, pca:K, pca:FRACTION, pca:K:whiten, pq:M"),
                 "index": (r"none|pca:\d+", "none, pca:K")}
_MINIMUM = {("extract", "batch_size"): 1, ("extract", "shard_size"): 1, ("extract", "image_size"): 1,
            ("train_shallow", "cv"): 2, ("index", "k"): 1, ("index", "nlist"): 1, ("index", "pq_m"): 1,
            ("index", "nprobe"): 1, ("index", "sample_queries"): 1, ("project", "sample"): 1,
            ("project", "n_neighbors"): 2}


def _check_values(steps: dict[str, dict], file: Path) -> None:
    import re

    from featx.backbones import resolve_family
    from featx.backbones.pooling import check_pool_with_tta
    from featx.preprocess.views import check_tta

    for (step, key), allowed in _choices().items():
        value = steps.get(step, {}).get(key)
        if value is not None and value not in allowed:
            raise InputError(f"{file}: key '{step}.{key}' is '{value}'; allowed: {', '.join(allowed)}")
    for step, (pattern, forms) in _REDUCE_FORMS.items():
        value = steps.get(step, {}).get("reduce")
        if value is not None and not re.fullmatch(pattern, value):
            raise InputError(f"{file}: key '{step}.reduce' is '{value}'; allowed forms: {forms}")
    for (step, key), minimum in _MINIMUM.items():
        value = steps.get(step, {}).get(key)
        if value is not None and value < minimum:
            raise InputError(f"{file}: key '{step}.{key}' is {value}; it must be at least {minimum}")
    extract = steps.get("extract", {})
    try:
        if "model" in extract:
            resolve_family(extract["model"])
        tta = check_tta(extract.get("tta", 1))
        check_pool_with_tta(extract.get("pool", "avg"), tta)
    except FeatxError as exc:
        raise InputError(f"{file}: {exc}") from None

"""Recipes: YAML files that chain extract → train_shallow → audit → anomaly → index → project → report, validated
completely before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from featx.errors import FeatxError, InputError
from featx.io.sources import is_glob

STEPS = ("extract", "train_shallow", "audit", "anomaly", "index", "project", "report")
TOP_LEVEL = {"name": (str,), "output": (str,), **{step: (dict, type(None)) for step in STEPS}}


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
        raise InputError(f"recipe '{file}' does not exist; the shipped ones are in pipelines/ (e.g. "
                         f"pipelines/demo.yaml)")
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
        steps[step] = _validated(step, dict(data[step] or {}), file)
    inputs = steps["extract"]["inputs"]
    if not inputs:
        raise InputError(f"{file}: key 'extract.inputs' is empty; give the image folders, manifests or globs")
    _check_extract_values(steps["extract"], file)
    steps["extract"]["inputs"] = [_resolve_input(i, base, file) for i in ([inputs] if isinstance(inputs,
                                                                                                 str) else inputs)]
    if steps.get("train_shallow", {}).get("val"):
        steps["train_shallow"]["val"] = _resolve_input(steps["train_shallow"]["val"], base, file,
                                                       key="train_shallow.val")
    if steps.get("anomaly", {}).get("masks"):
        steps["anomaly"]["masks"] = _resolve_input(steps["anomaly"]["masks"], base, file, key="anomaly.masks")
    name = data.get("name") or file.stem
    output = Path(data.get("output") or f"runs/{name}")
    return Recipe(file, name, output if output.is_absolute() else (base / output).resolve(), steps)


def _validated(step: str, options: dict, file: Path) -> dict:
    """The step's options as given, checked by the step's model in featx.options (names, types,
    choices, ranges): the same definition the CLI and the HTTP bodies use."""
    from pydantic import ValidationError

    from featx.options import RECIPE_STEPS

    model = RECIPE_STEPS[step]
    try:
        model.model_validate(options, strict=True)  # strict: YAML's `true` is not a number, "5" not an int
    except ValidationError as exc:
        error = exc.errors()[0]
        key = f"{step}.{'.'.join(str(part) for part in error['loc'])}"
        if error["type"] == "extra_forbidden":
            own_first = sorted(model.model_fields, key=lambda name: name not in model.__annotations__)
            raise InputError(f"{file}: unknown key '{key}'; allowed: {', '.join(own_first)}") from None
        if error["type"] == "missing":
            raise InputError(f"{file}: key '{key}' is missing; {model.model_fields[error['loc'][0]].description}") \
                from None
        message = error["msg"].removeprefix("Value error, ")
        raise InputError(f"{file}: key '{key}': {message} (got {error.get('input')!r})") from None
    return options


def _resolve_input(value: str, base: Path, file: Path, key: str = "extract.inputs") -> str:
    """Relative paths are relative to the recipe file, so a recipe works from any folder."""
    path = Path(str(value)).expanduser()
    path = path if path.is_absolute() else base / path
    if not is_glob(value) and not path.exists():
        raise InputError(f"{file}: key '{key}': path '{value}' does not exist (resolved to '{path}'); paths are "
                         "relative to the recipe file")
    return str(path)


def _check_extract_values(extract: dict, file: Path) -> None:
    """What the option model cannot tell alone: the model exists, the pooling suits the TTA."""
    from featx.backbones import resolve_family
    from featx.backbones.pooling import check_pool_with_tta
    from featx.options import EXTRACT
    from featx.preprocess.views import check_tta

    try:
        if "model" in extract:
            resolve_family(extract["model"])
        check_pool_with_tta(extract.get("pool", EXTRACT.pool), check_tta(extract.get("tta", EXTRACT.tta)))
    except FeatxError as exc:
        raise InputError(f"{file}: {exc}") from None

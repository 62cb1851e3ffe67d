"""The CLI's choices, defaults, bounds and help are the option models' (featx.options): one definition."""

from __future__ import annotations

import typing

import annotated_types
import pytest
import typer

from featx.cli import app
from featx.options import (
    AuditOptions,
    ExtractOptions,
    IndexOptions,
    LayersOptions,
    PredictOptions,
    ProbeOptions,
    ProjectOptions,
    SearchOptions,
    ServeOptions,
    TrainShallowOptions,
)

EXTRACT = {"model": "model", "weights": "weights", "layer": "layers", "pool": "pool", "image_size": "image_size",
           "tta": "tta", "batch_size": "batch_size", "workers": "workers", "device": "device", "amp": "amp",
           "dtype": "dtype", "shard_size": "shard_size", "frozen": "frozen", "decode": "decode", "resize": "resize",
           "engine": "engine", "ray_address": "ray_address", "num_gpus_per_worker": "num_gpus_per_worker",
           "cpus_per_worker": "cpus_per_worker"}
SAME = {model: {name: name for name in model.model_fields}
        for model in (TrainShallowOptions, AuditOptions, IndexOptions, ProjectOptions, ServeOptions, ProbeOptions)}
PREDICT = {"tta": "tta", "output_format": "format", "top_k": "top_k", "device": "device", "batch_size": "batch_size",
           "workers": "workers"}
SEARCH = {"k": "k", "rows": "rows", "output_format": "format", "html": "html", "evaluate": "evaluate",
          "evaluate_json": "evaluate_json", "device": "device", "mmap": "mmap"}
STEPS = [("extract", ExtractOptions, EXTRACT), ("serve", ServeOptions, SAME[ServeOptions]),
         ("predict", PredictOptions, PREDICT), ("search", SearchOptions, SEARCH), ("layers", LayersOptions,
                                                                                   {"image_size": "image_size"}),
         ("probe", ProbeOptions, {k: v for k, v in SAME[ProbeOptions].items() if k != "shift_images"}),
         ("train-shallow", TrainShallowOptions, SAME[TrainShallowOptions]), ("audit", AuditOptions, SAME[AuditOptions]),
         ("index", IndexOptions, {k: v for k, v in SAME[IndexOptions].items() if k != "seed"}),
         ("project", ProjectOptions, SAME[ProjectOptions])]


def choices(annotation) -> tuple | None:
    while typing.get_origin(annotation) in (typing.Union, typing.Optional):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else None


def offered(option) -> tuple | None:
    """The choices the CLI accepts for an option (typer's own click, or click's Choice)."""
    descriptor = getattr(option, "type_descriptor", None)
    if descriptor is not None:
        return choices(descriptor.annotation)
    return tuple(getattr(option.type, "choices", ())) or None


def params(command: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


@pytest.mark.parametrize("command,model,mapping", STEPS)
def test_cli_options_equal_the_option_model(command, model, mapping):
    found = params(command)
    for name, field_name in mapping.items():
        option, field = found[name], model.model_fields[field_name]
        assert offered(option) == choices(field.annotation), name
        default = field.get_default(call_default_factory=True)
        assert option.default == (None if default in ([], {}) else default), name
        assert option.help == field.description, name
        bounds = {type(b): b for b in field.metadata}
        assert option.min == (bounds[annotated_types.Ge].ge if annotated_types.Ge in bounds else None), name
        assert option.max == (bounds[annotated_types.Le].le if annotated_types.Le in bounds else None), name
    # every option the model has a choice list for is offered with exactly those choices
    assert {f for f, i in model.model_fields.items() if choices(i.annotation)} <= set(mapping.values())


def test_every_device_option_offers_the_devices_the_library_accepts():
    device = choices(ExtractOptions.model_fields["device"].annotation)
    for command in ("extract", "predict", "search", "serve", "probe"):
        assert offered(params(command)["device"]) == device, command


def test_a_choice_outside_the_model_is_refused_with_the_allowed_values(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["extract", str(tmp_path), "--out", str(tmp_path / "s"), "--pool", "median"])
    assert result.exit_code == 2
    assert "median" in result.output and "avgmax" in result.output


def test_option_models_are_the_library_defaults_and_choices():
    """Defaults equal the Python functions' keyword defaults; choices equal the tuples the library checks."""
    import inspect

    from featx.api import audit
    from featx.audit.label_issues import CLASSIFIERS as AUDIT_CLASSIFIERS
    from featx.learn.classify import BALANCES, CLASSIFIERS, DEFAULT_CLASSIFIER, train_shallow
    from featx.learn.duplicates import CALIBRATIONS
    from featx.learn.reduce import NORMALIZERS
    from featx.maps.project import COLORS, METHODS, project
    from featx.retrieval.index import KINDS, METRICS, Index

    for model, function in ((TrainShallowOptions, train_shallow), (AuditOptions, audit), (IndexOptions, Index.build),
                            (ProjectOptions, project)):
        signature = inspect.signature(function).parameters
        for name, field in model.model_fields.items():
            if name != "color":  # the map's colour is a write_projection option
                assert signature[name].default == field.get_default(), (model.__name__, name)
    # no classifier given: train-shallow chooses among AUTO_CLASSIFIERS (DEFAULT_CLASSIFIER with --no-tune)
    from featx.learn.select import AUTO_CLASSIFIERS

    assert TrainShallowOptions.model_fields["classifier"].default is None
    assert DEFAULT_CLASSIFIER in CLASSIFIERS and set(AUTO_CLASSIFIERS) <= set(CLASSIFIERS)
    fields = {m: m.model_fields for m in (TrainShallowOptions, AuditOptions, IndexOptions, ProjectOptions)}
    pairs = [(fields[TrainShallowOptions]["classifier"], CLASSIFIERS), (fields[TrainShallowOptions]["balance"],
                                                                        BALANCES),
             (fields[TrainShallowOptions]["normalize"], NORMALIZERS), (fields[AuditOptions]["classifier"],
                                                                       AUDIT_CLASSIFIERS),
             (fields[AuditOptions]["calibrate"], CALIBRATIONS), (fields[IndexOptions]["kind"], KINDS),
             (fields[IndexOptions]["metric"], METRICS), (fields[ProjectOptions]["method"], METHODS),
             (fields[ProjectOptions]["color"], COLORS)]
    for field, library in pairs:
        assert choices(field.annotation) == tuple(library)

"""featx.options: the one definition of each step's options matches what the library accepts."""

from typing import get_args

import pytest
from pydantic import ValidationError

from featx.options import Amp, Decoder, Device, Dtype, ExtractOptions, Pool, Resize, ServeOptions


def test_choices_equal_the_library_checks():
    from featx.backbones.pooling import POOLINGS
    from featx.extract.extractor import AMP_MODES, DECODERS, DEVICES, DTYPES

    assert set(get_args(Pool)) == set(POOLINGS)
    assert get_args(Device) == DEVICES and get_args(Amp) == AMP_MODES
    assert get_args(Dtype) == DTYPES and get_args(Decoder) == DECODERS
    from featx.preprocess.config import RESIZE_MODES

    assert get_args(Resize) == tuple(RESIZE_MODES)


def test_extract_options_are_the_extract_keywords():
    import inspect

    from featx.extract.job import extract

    # head_start: the CLI's decoding started before torch loaded, handed over in-process (not an option)
    keywords = set(inspect.signature(extract).parameters) - {"inputs", "out", "overwrite", "append", "progress",
                                                             "head_start"}
    assert set(ExtractOptions.model_fields) == keywords


def test_unknown_or_out_of_range_options_are_refused():
    with pytest.raises(ValidationError, match="pool"):
        ExtractOptions(pool="median")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        ExtractOptions(poll="avg")
    with pytest.raises(ValidationError, match="tta"):
        ExtractOptions(tta=11)
    with pytest.raises(ValidationError, match="max_batch"):
        ServeOptions(max_batch=0)


def test_recipes_check_extract_choices_before_any_work(tmp_path):
    from featx.errors import InputError
    from featx.recipes.recipe import load_recipe

    (tmp_path / "images").mkdir()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("extract:\n  inputs: images\n  pool: median\n")
    with pytest.raises(InputError, match=r"key 'extract.pool': Input should be 'avg', 'max'.*\(got 'median'\)"):
        load_recipe(recipe)
    recipe.write_text("extract:\n  inputs: images\n  tta: 12\n")
    with pytest.raises(InputError, match="key 'extract.tta'"):
        load_recipe(recipe)
    recipe.write_text("extract:\n  inputs: images\n  pool: gem\n  tta: 2\n")
    assert load_recipe(recipe).steps["extract"]["pool"] == "gem"

"""featx.options: the one definition of each step's options matches what the library accepts."""

from typing import get_args

import pytest
from pydantic import ValidationError

from featx.options import Amp, Decoder, Device, Dtype, ExtractOptions, Pool, ServeOptions


def test_choices_equal_the_library_checks():
    from featx.extract import AMP_MODES, DECODERS, DEVICES, DTYPES
    from featx.pooling import POOLINGS

    assert set(get_args(Pool)) == set(POOLINGS)
    assert get_args(Device) == DEVICES and get_args(Amp) == AMP_MODES
    assert get_args(Dtype) == DTYPES and get_args(Decoder) == DECODERS


def test_extract_options_are_the_extract_keywords():
    import inspect

    from featx.extract import extract

    keywords = set(inspect.signature(extract).parameters) - {"inputs", "out", "overwrite", "append", "progress"}
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

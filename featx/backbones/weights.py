"""Loading state dicts from local files safely: no pickle code runs (`weights_only=True` or
safetensors), checksums are recorded, and mismatches are explained."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from featx.errors import WeightsError
from featx.io.atomic import file_sha256  # noqa: F401  (re-exported: callers import it from here)

STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist; pass an existing .pth/.pt/.safetensors "
                           "state dict, 'default' or 'random'")
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise WeightsError(f"weights file '{path}' has suffix '{path.suffix}'; allowed: "
                           f"{', '.join(STATE_DICT_SUFFIXES)} (a state dict, not a pickled model)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError…
        raise WeightsError(f"cannot read weights file '{path}': {exc}. Save a plain state dict with "
                           "`torch.save(model.state_dict(), path)` or safetensors") from exc
    for key in ("state_dict", "model", "model_state_dict"):  # common training-checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file '{path}' does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """Load `state` into `model`, or explain which keys or shapes do not fit."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
                   for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        details = "; ".join(part for part in (
            f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
            f"{len(wrong_shape)} with another shape (e.g. {wrong_shape[:2]})" if wrong_shape else "",
        ) if part)
        raise WeightsError(f"weights '{source}' do not fit model '{model_name}': {details}. "
                           "Pass weights saved from this same architecture (`featx models` lists them)")
    model.load_state_dict(state, strict=True)

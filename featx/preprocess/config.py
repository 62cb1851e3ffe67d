"""The preprocessing that belongs to a set of weights: read from the weights' own metadata
(torchvision `Weights.transforms()`, timm `pretrained_cfg`), never hand-copied."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from featx.errors import InputError

# how the image becomes the square network input: "crop" resizes the shorter side and centre-crops
# (the weights' own recipe), "full" squashes the whole image, "pad" letterboxes it (nothing lost)
RESIZE_MODES = ("crop", "full", "pad")


@dataclass(frozen=True)
class Preprocess:
    resize_size: int  # shorter side after resizing
    crop_size: int  # square center crop fed to the network
    interpolation: str  # "bilinear" | "bicubic" | "nearest"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "crop"  # one of RESIZE_MODES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocess":
        return cls(int(data["resize_size"]), int(data["crop_size"]), str(data["interpolation"]),
                   tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]),
                   str(data.get("resize", "crop")))  # stores made before --resize existed cropped

    def with_image_size(self, image_size: int) -> "Preprocess":
        """Scale to another crop size, keeping the weights' resize/crop ratio."""
        ratio = self.resize_size / self.crop_size
        return replace(self, crop_size=int(image_size), resize_size=int(math.floor(image_size * ratio)))

    def with_resize(self, mode: str) -> "Preprocess":
        return replace(self, resize=check_resize(mode))


def check_resize(mode: str) -> str:
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown --resize '{mode}'; allowed: {', '.join(RESIZE_MODES)} (crop: shorter side "
                         "resized then centre-cropped; full: whole image squashed; pad: letterboxed)")
    return mode


def from_torchvision_weights(weights) -> Preprocess:
    transform = weights.transforms()
    return Preprocess(
        resize_size=int(transform.resize_size[0]),
        crop_size=int(transform.crop_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
    )


def from_timm_config(pretrained_cfg: dict) -> Preprocess:
    crop = int(pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(pretrained_cfg.get("crop_pct", 0.875) or 1.0)
    interpolation = pretrained_cfg.get("interpolation", "bicubic")
    if interpolation not in ("bilinear", "bicubic", "nearest"):
        interpolation = "bicubic"
    return Preprocess(
        resize_size=int(math.floor(crop / crop_pct)),
        crop_size=crop,
        interpolation=interpolation,
        mean=tuple(float(v) for v in pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
    )

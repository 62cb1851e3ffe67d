"""Turning a decoded image into network input: resize, crop, and the deterministic TTA views.
Workers return uint8 tensors (4x less to move); normalisation happens on the device."""

from __future__ import annotations

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from featx.backbones.preprocess import Preprocess
from featx.errors import InputError

MAX_TTA = 10
# view order: the original first, then its flip, then shifted crops (corners) and their flips
_CORNERS = ("top_left", "bottom_right", "top_right", "bottom_left")
_MIN_SHIFT_MARGIN = 1.14  # corner crops need room around the center crop


def check_tta(tta: int) -> int:
    if not 1 <= int(tta) <= MAX_TTA:
        raise InputError(f"--tta {tta} is out of range; allowed 1..{MAX_TTA} (1 = no test-time augmentation)")
    return int(tta)


def image_views(image: Image.Image | torch.Tensor, pre: Preprocess, tta: int = 1) -> torch.Tensor:
    """(tta, 3, crop, crop) uint8: center crop, its flip, then corner crops and their flips.
    `image` is a PIL image (decoded in a worker) or a (3, H, W) uint8 tensor (decoded on the device)."""
    on_tensor = isinstance(image, torch.Tensor)
    as_tensor = (lambda x: x) if on_tensor else F.pil_to_tensor
    interpolation = InterpolationMode(pre.interpolation)
    c = pre.crop_size
    if on_tensor:
        center = F.center_crop(F.resize(image, [pre.resize_size], interpolation=interpolation, antialias=True), [c, c])
    else:
        center = center_crop_resized(image, pre)
    views = [center]
    if tta >= 2:
        views.append(center.flip(-1))
    if tta >= 3:
        resized = F.resize(image, [pre.resize_size], interpolation=interpolation, antialias=True)
        if min(F.get_dimensions(resized)[1:]) < c * _MIN_SHIFT_MARGIN:
            resized = F.resize(image, [int(c * _MIN_SHIFT_MARGIN)], interpolation=interpolation, antialias=True)
        _, h, w = F.get_dimensions(resized)
        offsets = {"top_left": (0, 0), "bottom_right": (h - c, w - c), "top_right": (0, w - c), "bottom_left": (h - c, 0)}
        corners = [as_tensor(F.crop(resized, *offsets[name], c, c)) for name in _CORNERS]
        views.extend(corners)
        views.extend(crop.flip(-1) for crop in corners)
    return torch.stack(views[:tta])


_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def center_crop_resized(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to `resize_size`, then center-crop `crop_size` — as one resampling
    of just the source region that survives the crop (40% less work than resizing it all)."""
    w, h = image.size
    side = pre.crop_size * min(w, h) / pre.resize_size  # the crop, in source pixels
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    resized = image.resize((pre.crop_size, pre.crop_size), _PIL_FILTERS[pre.interpolation], box=box)
    return F.pil_to_tensor(resized)


def normalise(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled and standardised with the weights' mean and std."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean) / std

"""Turning a decoded image into network input: resize (crop | full | pad), and the deterministic
TTA views. Workers return uint8 tensors (4x less to move); normalisation happens on the device.

Big images are cheap: a JPEG is decoded at the smallest DCT scale that still covers the target
(`draft_request`), and Pillow reduces by an integer factor before the final resample
(`REDUCING_GAP`). Both change pixels only within `PIXEL_TOLERANCE` of a full-size decode with an
exact resample; the store's preprocessing config records both."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode

from featx.errors import InputError
from featx.options import EXTRACT
from featx.preprocess.config import Preprocess

# the Pillow pixels live in featx.preprocess.pil (no torch there, so a process can make them before torch loads)
from featx.preprocess.pil import (  # noqa: F401 (re-exported)
    DRAFT_MARGIN,
    PIL_FILTERS,
    REDUCING_GAP,
    SHIFT_MARGIN,
    crop_resized_image,
    draft_request,
    letterbox_fill,
    letterbox_geometry,
    letterbox_image,
    resize_image,
    to_chw,
)

MAX_TTA = 10
# view order: the original first, then its flip, then shifted crops (corners) and their flips
_CORNERS = ("top_left", "bottom_right", "top_right", "bottom_left")
# mean |difference| (0..255 levels) allowed against a full-size decode and an exact resample
PIXEL_TOLERANCE = 2.0


def check_tta(tta: int) -> int:
    if not 1 <= int(tta) <= MAX_TTA:
        raise InputError(f"--tta {tta} is out of range; allowed 1..{MAX_TTA} (1 = no test-time augmentation)")
    return int(tta)


def image_views(image: Image.Image | torch.Tensor, pre: Preprocess, tta: int = EXTRACT.tta) -> torch.Tensor:
    """(tta, 3, crop, crop) uint8: the whole view (cropped, squashed or letterboxed), its flip, then
    corner crops of a slightly larger view and their flips.
    `image` is a PIL image (decoded in a worker) or a (3, H, W) uint8 tensor (decoded on the device)."""
    as_tensor = (lambda x: x) if isinstance(image, torch.Tensor) else F.pil_to_tensor
    c = pre.crop_size
    views = [main_view(image, pre)]
    if tta == 1:  # no torch.stack: its copy is a parallel op, which would start an OpenMP team in every
        # decoding thread (the service decodes in threads beside the forward pass)
        return views[0].unsqueeze(0)
    if tta >= 2:
        views.append(views[0].flip(-1))
    if tta >= 3:
        canvas = _shift_canvas(image, pre)
        _, h, w = F.get_dimensions(canvas)
        offsets = {"top_left": (0, 0), "bottom_right": (h - c, w - c), "top_right": (0, w - c), "bottom_left": (h - c,
                                                                                                                0)}
        corners = [as_tensor(F.crop(canvas, *offsets[name], c, c)) for name in _CORNERS]
        views.extend(corners)
        views.extend(crop.flip(-1) for crop in corners)
    return torch.stack(views[:tta])


def main_view(image: Image.Image | torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """(3, crop, crop) uint8 in the preprocessing's resize mode."""
    c = pre.crop_size
    if pre.resize == "full":
        return _to_tensor(_resize(image, c, c, pre))
    if pre.resize == "pad":
        return _to_tensor(letterbox(image, pre, c))
    if isinstance(image, torch.Tensor):
        return F.center_crop(_resize_short(image, pre.resize_size, pre), [c, c])
    return center_crop_resized(image, pre)


def _shift_canvas(image, pre: Preprocess):
    """The view the corner crops are cut from: the same mode, ≥ 14% larger than the crop."""
    c = pre.crop_size
    side = max(pre.resize_size, math.ceil(c * SHIFT_MARGIN))
    if pre.resize == "full":
        return _resize(image, side, side, pre)
    if pre.resize == "pad":
        return letterbox(image, pre, side)
    resized = _resize_short(image, pre.resize_size, pre)
    if min(F.get_dimensions(resized)[1:]) < c * SHIFT_MARGIN:
        resized = _resize_short(image, math.ceil(c * SHIFT_MARGIN), pre)
    return resized


def center_crop_resized(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to `resize_size`, then center-crop `crop_size`, in one resampling
    (`featx.preprocess.pil.crop_resized_image`)."""
    return torch.from_numpy(to_chw(crop_resized_image(image, pre)))


def letterbox(image: Image.Image | torch.Tensor, pre: Preprocess, side: int):
    """The whole image scaled to fit a side x side square, centred; the rest is filled with the
    weights' mean colour, which normalises to 0 (the most neutral input the network knows)."""
    if isinstance(image, Image.Image):
        return letterbox_image(image, pre, side)
    _, h, w = F.get_dimensions(image)
    new_w, new_h, left, top = letterbox_geometry(w, h, side)
    resized = _resize(image, new_w, new_h, pre)
    canvas = torch.tensor(letterbox_fill(pre), dtype=torch.uint8, device=image.device).view(3, 1, 1).repeat(1, side,
                                                                                                            side)
    canvas[:, top:top + new_h, left:left + new_w] = resized
    return canvas


def _resize(image, width: int, height: int, pre: Preprocess):
    if isinstance(image, torch.Tensor):
        return F.resize(image, [height, width], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    return resize_image(image, width, height, pre)


def _resize_short(image, short: int, pre: Preprocess):
    _, h, w = F.get_dimensions(image)
    scale = short / min(w, h)
    return _resize(image, max(short, int(w * scale)) if w >= h else short,
                   short if w >= h else max(short, int(h * scale)), pre)


def _to_tensor(image) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else torch.from_numpy(to_chw(image))


def normalise(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled and standardised with the weights' mean and std."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean) / std


# --- the raw-pixel baseline ----------------------------------------------------------------------

PIXELS = "pixels"  # the stored pseudo-layer of downscaled pixels (a baseline for the CNN's features)
PIXEL_SIDE = 32


def pixel_vectors(views: torch.Tensor, side: int = PIXEL_SIDE) -> torch.Tensor:
    """(N, 3 * side * side) float pixels in [0, 1] of (N, 3, crop, crop) uint8 views: the network's own
    input, area-downscaled. They are what a classifier on raw pixels sees, for the baseline that says
    whether the CNN's features help at all."""
    small = torch.nn.functional.interpolate(views.float() / 255.0, size=(side, side), mode="area")
    return small.flatten(1)

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

from featx.backbones.preprocess import Preprocess
from featx.errors import InputError
from featx.images import FULL_SIZE_KEY

MAX_TTA = 10
# view order: the original first, then its flip, then shifted crops (corners) and their flips
_CORNERS = ("top_left", "bottom_right", "top_right", "bottom_left")
_MIN_SHIFT_MARGIN = 1.14  # corner crops need room around the center crop
# Pillow: reduce() by an integer factor while the image stays ≥ 3x the target, then resample;
# Pillow's docs call 3.0 "indistinguishable from fair resampling in most cases"
REDUCING_GAP = 3.0
# mean |difference| (0..255 levels) allowed against a full-size decode and an exact resample
PIXEL_TOLERANCE = 2.0
# the draft scale leaves the image >= 1.5x the view: the DCT-domain downscale of libjpeg is blurrier
# than an exact resample, and decoded right at the view's size a textured photo differed by up to
# 3.2 (crop) and 5.3 (pad) levels on average; with 1.5x to spare the worst hymenoptera photo differs
# by 0.4 (crop) and 1.1 (pad), for ~10% more decoding time on 12 MP JPEGs
DRAFT_MARGIN = 1.5


def check_tta(tta: int) -> int:
    if not 1 <= int(tta) <= MAX_TTA:
        raise InputError(f"--tta {tta} is out of range; allowed 1..{MAX_TTA} (1 = no test-time augmentation)")
    return int(tta)


def image_views(image: Image.Image | torch.Tensor, pre: Preprocess, tta: int = 1) -> torch.Tensor:
    """(tta, 3, crop, crop) uint8: the whole view (cropped, squashed or letterboxed), its flip, then
    corner crops of a slightly larger view and their flips.
    `image` is a PIL image (decoded in a worker) or a (3, H, W) uint8 tensor (decoded on the device)."""
    as_tensor = (lambda x: x) if isinstance(image, torch.Tensor) else F.pil_to_tensor
    c = pre.crop_size
    views = [main_view(image, pre)]
    if tta >= 2:
        views.append(views[0].flip(-1))
    if tta >= 3:
        canvas = _shift_canvas(image, pre)
        _, h, w = F.get_dimensions(canvas)
        offsets = {"top_left": (0, 0), "bottom_right": (h - c, w - c), "top_right": (0, w - c), "bottom_left": (h - c, 0)}
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
    side = max(pre.resize_size, math.ceil(c * _MIN_SHIFT_MARGIN))
    if pre.resize == "full":
        return _resize(image, side, side, pre)
    if pre.resize == "pad":
        return letterbox(image, pre, side)
    resized = _resize_short(image, pre.resize_size, pre)
    if min(F.get_dimensions(resized)[1:]) < c * _MIN_SHIFT_MARGIN:
        resized = _resize_short(image, math.ceil(c * _MIN_SHIFT_MARGIN), pre)
    return resized


def draft_request(size: tuple[int, int], pre: Preprocess, tta: int = 1) -> tuple[int, int]:
    """The smallest (width, height) an image of `size` may be decoded at: every view covered with
    `DRAFT_MARGIN` to spare (JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below the
    request)."""
    w, h = size
    c = pre.crop_size
    if pre.resize == "crop":
        short = pre.resize_size if tta < 3 else max(pre.resize_size, math.ceil(c * _MIN_SHIFT_MARGIN))
        scale = DRAFT_MARGIN * short / min(w, h)
    else:
        side = c if tta < 3 else max(pre.resize_size, math.ceil(c * _MIN_SHIFT_MARGIN))
        if pre.resize == "full":
            return min(w, math.ceil(DRAFT_MARGIN * side)), min(h, math.ceil(DRAFT_MARGIN * side))
        scale = DRAFT_MARGIN * side / max(w, h)
    return max(1, min(w, math.ceil(w * scale))), max(1, min(h, math.ceil(h * scale)))


_PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def center_crop_resized(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """Resize the shorter side to `resize_size`, then center-crop `crop_size` — as one resampling
    of just the source region that survives the crop (40% less work than resizing it all)."""
    w, h = image.size
    side = pre.crop_size * min(w, h) / pre.resize_size  # the crop, in source pixels
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    resized = image.resize((pre.crop_size, pre.crop_size), _PIL_FILTERS[pre.interpolation], box=box,
                           reducing_gap=REDUCING_GAP)
    return F.pil_to_tensor(resized)


def letterbox(image: Image.Image | torch.Tensor, pre: Preprocess, side: int):
    """The whole image scaled to fit a side x side square, centred; the rest is filled with the
    weights' mean colour, which normalises to 0 (the most neutral input the network knows)."""
    _, h, w = F.get_dimensions(image)
    if isinstance(image, Image.Image):  # a JPEG decoded at a DCT scale: its sides are rounded up
        w, h = image.info.get(FULL_SIZE_KEY, (w, h))  # (113 for 900 / 8): size the box from the full image
    scale = side / max(w, h)
    new_w, new_h = max(1, min(side, round(w * scale))), max(1, min(side, round(h * scale)))
    resized = _resize(image, new_w, new_h, pre)
    left, top = (side - new_w) // 2, (side - new_h) // 2
    fill = letterbox_fill(pre)
    if isinstance(image, torch.Tensor):
        canvas = torch.tensor(fill, dtype=torch.uint8, device=image.device).view(3, 1, 1).repeat(1, side, side)
        canvas[:, top:top + new_h, left:left + new_w] = resized
        return canvas
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(resized, (left, top))
    return canvas


def letterbox_fill(pre: Preprocess) -> tuple[int, int, int]:
    return tuple(int(round(m * 255)) for m in pre.mean)


def _resize(image, width: int, height: int, pre: Preprocess):
    if isinstance(image, torch.Tensor):
        return F.resize(image, [height, width], interpolation=InterpolationMode(pre.interpolation), antialias=True)
    if image.size == (width, height):
        return image
    return image.resize((width, height), _PIL_FILTERS[pre.interpolation], reducing_gap=REDUCING_GAP)


def _resize_short(image, short: int, pre: Preprocess):
    _, h, w = F.get_dimensions(image)
    scale = short / min(w, h)
    return _resize(image, max(short, int(w * scale)) if w >= h else short,
                   short if w >= h else max(short, int(h * scale)), pre)


def _to_tensor(image) -> torch.Tensor:
    return image if isinstance(image, torch.Tensor) else F.pil_to_tensor(image)


def normalise(batch: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float, scaled and standardised with the weights' mean and std."""
    mean = torch.tensor(pre.mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean) / std

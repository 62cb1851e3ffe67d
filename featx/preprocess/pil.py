"""The Pillow side of preprocessing, without torch: the main view of a decoded image (crop | full |
pad) as uint8 pixels, and the JPEG draft size it may be decoded at. `featx.preprocess.views` builds its
tensors from these same functions, so a view made here (in a process that has not imported torch
yet, see `featx.extract.head_start`) has exactly the pixels the extractor would make."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from featx.io.decode import FULL_SIZE_KEY, decode_image
from featx.options import EXTRACT

if TYPE_CHECKING:  # importing featx.backbones imports torch; these functions only read its fields
    from featx.preprocess.config import Preprocess

SHIFT_MARGIN = 1.14  # corner crops need room around the center crop
# Pillow: reduce() by an integer factor while the image stays ≥ 3x the target, then resample;
# Pillow's docs call 3.0 "indistinguishable from fair resampling in most cases"
REDUCING_GAP = 3.0
# the draft scale leaves the image >= 1.5x the view: the DCT-domain downscale of libjpeg is blurrier
# than an exact resample, and decoded right at the view's size a textured photo differed by up to
# 3.2 (crop) and 5.3 (pad) levels on average; with 1.5x to spare the worst hymenoptera photo differs
# by 0.4 (crop) and 1.1 (pad), for ~10% more decoding time on 12 MP JPEGs
DRAFT_MARGIN = 1.5

PIL_FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def draft_request(size: tuple[int, int], pre: Preprocess, tta: int = EXTRACT.tta) -> tuple[int, int]:
    """The smallest (width, height) an image of `size` may be decoded at: every view covered with
    `DRAFT_MARGIN` to spare (JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale, never below the
    request)."""
    w, h = size
    c = pre.crop_size
    if pre.resize == "crop":
        short = pre.resize_size if tta < 3 else max(pre.resize_size, math.ceil(c * SHIFT_MARGIN))
        scale = DRAFT_MARGIN * short / min(w, h)
    else:
        side = c if tta < 3 else max(pre.resize_size, math.ceil(c * SHIFT_MARGIN))
        if pre.resize == "full":
            return min(w, math.ceil(DRAFT_MARGIN * side)), min(h, math.ceil(DRAFT_MARGIN * side))
        scale = DRAFT_MARGIN * side / max(w, h)
    return max(1, min(w, math.ceil(w * scale))), max(1, min(h, math.ceil(h * scale)))


def decode_for_network(data: bytes, pre: Preprocess, tta: int = EXTRACT.tta, *, max_pixels: int | None = None
                       ) -> Image.Image:
    """The RGB image the network's views are made from: decoded safely (`decode_image`: EXIF
    rotation, any mode to RGB, bombs refused) at the JPEG draft scale `draft_request` allows for
    this preprocessing and TTA. Every path that feeds the network decodes through here
    (`featx.preprocess.contract`)."""
    return decode_image(data, draft_size=partial(draft_request, pre=pre, tta=tta), max_pixels=max_pixels)


def crop_resized_image(image: Image.Image, pre: Preprocess) -> Image.Image:
    """Resize the shorter side to `resize_size`, then center-crop `crop_size` — as one resampling
    of just the source region that survives the crop (40% less work than resizing it all)."""
    w, h = image.size
    side = pre.crop_size * min(w, h) / pre.resize_size  # the crop, in source pixels
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return image.resize((pre.crop_size, pre.crop_size), PIL_FILTERS[pre.interpolation], box=box,
                        reducing_gap=REDUCING_GAP)


def resize_image(image: Image.Image, width: int, height: int, pre: Preprocess) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), PIL_FILTERS[pre.interpolation], reducing_gap=REDUCING_GAP)


def letterbox_geometry(w: int, h: int, side: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top) of a w x h image scaled to fit a side x side square, centred."""
    scale = side / max(w, h)
    new_w, new_h = max(1, min(side, round(w * scale))), max(1, min(side, round(h * scale)))
    return new_w, new_h, (side - new_w) // 2, (side - new_h) // 2


def letterbox_image(image: Image.Image, pre: Preprocess, side: int) -> Image.Image:
    """The whole image scaled to fit a side x side square, centred; the rest is filled with the
    weights' mean colour. A JPEG decoded at a DCT scale has its sides rounded up (113 for 900 / 8),
    so the box is sized from the full image."""
    w, h = image.info.get(FULL_SIZE_KEY, image.size)
    new_w, new_h, left, top = letterbox_geometry(w, h, side)
    canvas = Image.new("RGB", (side, side), letterbox_fill(pre))
    canvas.paste(resize_image(image, new_w, new_h, pre), (left, top))
    return canvas


def letterbox_fill(pre: Preprocess) -> tuple[int, int, int]:
    return tuple(int(round(m * 255)) for m in pre.mean)


def main_view_image(image: Image.Image, pre: Preprocess) -> Image.Image:
    """The crop_size x crop_size view in the preprocessing's resize mode."""
    c = pre.crop_size
    if pre.resize == "full":
        return resize_image(image, c, c, pre)
    if pre.resize == "pad":
        return letterbox_image(image, pre, c)
    return crop_resized_image(image, pre)


def to_chw(image: Image.Image) -> np.ndarray:
    """(3, H, W) uint8, the layout (and values) of torchvision's `pil_to_tensor` (a writable copy)."""
    return np.array(image).transpose(2, 0, 1)


def plain_views(image: Image.Image, pre: Preprocess, tta: int) -> np.ndarray:
    """(tta, 3, crop, crop) uint8 for tta 1 (the view) or 2 (the view and its mirror image), the
    first views of `featx.preprocess.views.image_views`; corner crops (tta >= 3) are made there only."""
    if tta not in (1, 2):
        raise ValueError(f"plain_views makes 1 or 2 views, not {tta}")
    view = to_chw(main_view_image(image, pre))
    return np.stack([view, view[:, :, ::-1]][:tta])

"""Network input from images decoded on the device (`--decode torch`), resized in batches.

Resizing one image at a time costs a handful of kernel launches and a Python round trip per image,
which caps a GPU at a few thousand images per second whatever the network. Here each image's
resampling is written as Pillow computes it — a box average by an integer factor for big images
(`reducing_gap`), then a separable antialiased filter over the exact (fractional) source box that
the view keeps — and expressed as two small matrices. Images whose kept regions have the same size
are stacked and resampled by two batched matrix products; the matrices depend only on the geometry
and are cached, since a dataset's photos repeat a few sizes.

Following Pillow's arithmetic (same box, same filter weights, rounding to 8 bits between the
horizontal and the vertical pass) keeps the pixels within a level or two of the Pillow path,
inside `featx.preprocess.views.PIXEL_TOLERANCE` (tested on the CPU); the previous per-image
`torchvision.transforms.functional.resize` of the whole image was not (mean |difference| ≈ 2.6
levels on hymenoptera photos in `crop` mode, up to 10 on a textured one)."""

from __future__ import annotations

import math
from collections import defaultdict
from functools import lru_cache

import torch
import torch.nn.functional as nnf
from torchvision.io import ImageReadMode, decode_jpeg

from featx.io.decode import DecodeError, error_code, open_header
from featx.options import EXTRACT
from featx.preprocess.config import Preprocess
from featx.preprocess.views import REDUCING_GAP, image_views, letterbox_fill


def batched_views(images: list[torch.Tensor], pre: Preprocess, tta: int = EXTRACT.tta) -> torch.Tensor:
    """(len(images) * tta, 3, crop, crop) uint8 views of (3, H, W) uint8 images, image by image
    (the layout `featx.preprocess.views.image_views` gives, concatenated). Corner-crop TTA (tta >= 3) and
    nearest-neighbour weights go image by image."""
    if not images:
        raise ValueError("batched_views needs at least one image")
    if tta >= 3 or pre.interpolation not in _FILTERS:
        return torch.cat([image_views(image, pre, tta) for image in images])
    c = pre.crop_size
    device = images[0].device
    out = torch.empty((len(images), 3, c, c), dtype=torch.uint8, device=device)
    if pre.resize == "pad":
        out[:] = torch.tensor(letterbox_fill(pre), dtype=torch.uint8, device=device).view(1, 3, 1, 1)
    plans = [_plan(image.shape[2], image.shape[1], pre) for image in images]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, plan in enumerate(plans):
        groups[plan.group].append(i)
    for members in groups.values():
        resized = _resample_group([images[i] for i in members], [plans[i] for i in members], pre.interpolation)
        height, width = plans[members[0]].size
        if (height, width) == (c, c):  # crop and full fill the whole view: one copy for the group
            out.index_copy_(0, torch.tensor(members, device=device), resized)
            continue
        for k, i in enumerate(members):
            top, left = plans[i].place
            out[i, :, top:top + height, left:left + width] = resized[k]
    if tta == 2:  # the view, then its flip, for each image
        out = torch.stack([out, out.flip(-1)], dim=1).flatten(0, 1)
    return out


def _resample_group(images: list[torch.Tensor], plans: list["_Plan"], interpolation: str) -> torch.Tensor:
    """(n, 3, h, w) uint8: images whose plans share a group, resampled by two batched products."""
    first = plans[0]
    device = images[0].device
    stack = torch.stack([image[:, p.region[1]:p.region[3], p.region[0]:p.region[2]]
                         for image, p in zip(images, plans)]).float()
    if first.factor != (1, 1):  # Pillow's reduce(): the mean of each factor_y x factor_x block, 8 bits
        kernel = first.factor[::-1]
        stack = nnf.avg_pool2d(stack, kernel_size=kernel, stride=kernel, ceil_mode=True).round_()
    height, width = first.size
    across = torch.stack([_weights(stack.shape[3], width, p.box[0], p.box[2], interpolation, device)
                          for p in plans])  # (n, width, w_in)
    down = torch.stack([_weights(stack.shape[2], height, p.box[1], p.box[3], interpolation, device)
                        for p in plans])  # (n, height, h_in)
    horizontal = (stack @ across.transpose(1, 2).unsqueeze(1)).round_().clamp_(0, 255)  # Pillow keeps 8 bits here
    return (down.unsqueeze(1) @ horizontal).round_().clamp_(0, 255).to(torch.uint8)


class _Plan:
    """How one image becomes its view: the integer source region to read, the box-average factor
    (x, y), the fractional box inside the reduced region, the output size (h, w) and its place."""

    def __init__(self, region, factor, box, size, place):
        self.region, self.factor, self.box, self.size, self.place = region, factor, box, size, place
        self.group = (region[3] - region[1], region[2] - region[0], factor, size)


def _plan(w: int, h: int, pre: Preprocess) -> _Plan:
    c = pre.crop_size
    if pre.resize == "crop":  # as featx.preprocess.views.center_crop_resized
        side = c * min(w, h) / pre.resize_size
        box, size, place = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2), (c, c), (0, 0)
    elif pre.resize == "full":
        box, size, place = (0.0, 0.0, float(w), float(h)), (c, c), (0, 0)
    else:  # pad, as featx.preprocess.views.letterbox
        scale = c / max(w, h)
        new_w, new_h = max(1, min(c, round(w * scale))), max(1, min(c, round(h * scale)))
        box, size, place = (0.0, 0.0, float(w), float(h)), (new_h, new_w), ((c - new_h) // 2, (c - new_w) // 2)
    # Image.resize(..., box, reducing_gap): reduce by an integer factor first while the image stays
    # >= reducing_gap x the target, over a "safe" box grown by the filter's support
    factor_x = int((box[2] - box[0]) / size[1] / REDUCING_GAP) or 1
    factor_y = int((box[3] - box[1]) / size[0] / REDUCING_GAP) or 1
    if factor_x > 1 or factor_y > 1:
        support = _FILTERS[pre.interpolation][1] - 0.5
        sx, sy = support * (box[2] - box[0]) / size[1], support * (box[3] - box[1]) / size[0]
        region = (max(0, int(box[0] - sx)), max(0, int(box[1] - sy)), min(w, math.ceil(box[2] + sx)),
                  min(h, math.ceil(box[3] + sy)))
        box = ((box[0] - region[0]) / factor_x, (box[1] - region[1]) / factor_y,
               (box[2] - region[0]) / factor_x, (box[3] - region[1]) / factor_y)
        return _Plan(region, (factor_x, factor_y), box, size, place)
    # no reduction: read only the rows and columns the filter touches, the box shifted to match
    support = _FILTERS[pre.interpolation][1]
    sx = support * max((box[2] - box[0]) / size[1], 1.0)
    sy = support * max((box[3] - box[1]) / size[0], 1.0)
    region = (max(0, int(box[0] - sx)), max(0, int(box[1] - sy)), min(w, math.ceil(box[2] + sx)),
              min(h, math.ceil(box[3] + sy)))
    box = (box[0] - region[0], box[1] - region[1], box[2] - region[0], box[3] - region[1])
    return _Plan(region, (1, 1), box, size, place)


def _bilinear(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_(min=0)


def _bicubic(x: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}  # Pillow's filters and supports


@lru_cache(maxsize=1024)
def _weights(in_size: int, out_size: int, start: float, stop: float, interpolation: str,
             device: torch.device) -> torch.Tensor:
    """(out_size, in_size) float32: Pillow's resampling coefficients (`precompute_coeffs`) for the
    source interval [start, stop) mapped onto out_size pixels."""
    function, support = _FILTERS[interpolation]
    scale = (stop - start) / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    centers = start + (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale  # (out,)
    xmin = (centers - support + 0.5).trunc().clamp(min=0)
    xmax = (centers + support + 0.5).trunc().clamp(max=in_size)
    positions = torch.arange(in_size, dtype=torch.float64)  # (in,)
    weights = function((positions[None, :] - centers[:, None] + 0.5) / filterscale)
    inside = (positions[None, :] >= xmin[:, None]) & (positions[None, :] < xmax[:, None])
    weights = torch.where(inside, weights, torch.zeros_like(weights))
    total = weights.sum(1, keepdim=True)
    weights = torch.where(total != 0, weights / torch.where(total != 0, total, torch.ones_like(total)), weights)
    return weights.to(torch.float32).to(device)


# --- decoding on the device (nvJPEG on CUDA) --------------------------------------------------

def plain_jpeg(data: bytes, *, max_pixels: int | None = None) -> bool:
    """True for a JPEG that the tensor decoder handles (RGB/greyscale, within `max_pixels`, default
    Pillow's limit); DecodeError for a decompression bomb; False for anything else (decoded with
    Pillow, which reports its own errors)."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    try:
        header = open_header(data, max_pixels)
    except DecodeError as exc:
        if exc.code == "bomb":
            raise
        return False
    return header.mode in ("RGB", "L")


def decode_on(device: torch.device, blobs: list[torch.Tensor]) -> list[torch.Tensor | DecodeError]:
    """Decode a batch of JPEG byte tensors to RGB uint8 (3, H, W) on `device`, EXIF applied."""
    try:
        return list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
    except Exception:  # one bad file fails the batch call: decode one by one to find it
        results = []
        for blob in blobs:
            try:
                results.append(decode_jpeg(blob, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))
            except Exception as exc:
                results.append(DecodeError(error_code(exc), f"cannot decode JPEG on {device}: {exc}"))
        return results

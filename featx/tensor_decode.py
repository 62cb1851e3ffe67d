"""JPEG decoding with torchvision.io on the extraction device (nvJPEG on CUDA), for GPU boxes
where Pillow on the CPU cannot keep up with the network. Workers only read bytes and check the
header (size limit, colour mode); anything that is not a plain JPEG goes the Pillow way."""

from __future__ import annotations

import io
import warnings

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from featx.backbones.preprocess import Preprocess
from featx.images import DecodeError

_CORNER_SHIFT_MARGIN = 1.14


def plain_jpeg(data: bytes) -> bool:
    """True for a JPEG that the tensor decoder handles (RGB/greyscale, within the size limit);
    DecodeError for a decompression bomb; False for anything else (decoded with Pillow)."""
    if data[:3] != b"\xff\xd8\xff":
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            header = Image.open(io.BytesIO(data))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("bomb", f"decompression bomb refused: {exc}")
        except Exception:
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
                message = str(exc).lower()
                code = "truncated" if "truncat" in message or "premature" in message else "decode_error"
                results.append(DecodeError(code, f"cannot decode JPEG on {device}: {exc}"))
        return results


def tensor_views(image: torch.Tensor, pre: Preprocess, tta: int = 1) -> torch.Tensor:
    """The views of `views.image_views`, computed on a (3, H, W) uint8 tensor where it lies."""
    interpolation = InterpolationMode(pre.interpolation)
    resized = F.resize(image, [pre.resize_size], interpolation=interpolation, antialias=True)
    center = F.center_crop(resized, [pre.crop_size, pre.crop_size])
    views = [center]
    if tta >= 2:
        views.append(center.flip(-1))
    if tta >= 3:
        c = pre.crop_size
        if min(resized.shape[-2:]) < c * _CORNER_SHIFT_MARGIN:
            resized = F.resize(image, [int(c * _CORNER_SHIFT_MARGIN)], interpolation=interpolation, antialias=True)
        h, w = resized.shape[-2:]
        corners = [F.crop(resized, top, left, c, c) for top, left in ((0, 0), (h - c, w - c), (0, w - c), (h - c, 0))]
        views.extend(corners)
        views.extend(crop.flip(-1) for crop in corners)
    return torch.stack(views[:tta])

"""JPEG decoding with torchvision.io on the extraction device (nvJPEG on CUDA), for GPU boxes
where Pillow on the CPU cannot keep up with the network. Workers only read bytes and check the
header (size limit, colour mode); anything that is not a plain JPEG goes the Pillow way."""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from featx.images import DecodeError, error_code


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
                results.append(DecodeError(error_code(exc), f"cannot decode JPEG on {device}: {exc}"))
        return results

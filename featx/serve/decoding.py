"""Request images: bytes -> the network's uint8 views, safe to run in many threads at once.

Unlike `featx.images.decode_image`, the decompression-bomb check compares the pixel count with the
server's limit explicitly: `warnings.catch_warnings` changes process-global state and is not
thread-safe, so it has no place on a request path."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from PIL import Image, ImageOps

from featx.backbones.preprocess import Preprocess
from featx.images import DecodeError, error_code, to_rgb
from featx.views import image_views, main_view


def decode_views(data: bytes, preprocess: Preprocess, tta: int, *, max_pixels: int,
                 decoder: str = "pil") -> torch.Tensor:
    """(tta, 3, crop, crop) uint8 views of one uploaded image; DecodeError with featx's code."""
    if not data:
        raise DecodeError("empty", "the uploaded file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    # the Warning too: another thread's `catch_warnings` (featx.images, in an extract job) may turn it into an error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("bomb", f"decompression bomb refused: {exc}")
    except Image.UnidentifiedImageError:
        raise DecodeError("not_image", "not an image file Pillow can identify")
    except Exception as exc:
        raise DecodeError(error_code(exc), f"cannot open image: {exc}")
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("bomb", f"decompression bomb refused: {width}x{height} = {width * height} pixels, "
                                  f"above the limit of {max_pixels}")
    if decoder == "torch" and image.format == "JPEG" and image.mode in ("RGB", "L"):
        return _torch_views(data, preprocess, tta)
    try:
        if image.format == "JPEG":  # decode at a reduced scale whose shorter side stays >= the resize
            scale = preprocess.resize_size / min(width, height)
            image.draft("RGB", (int(np.ceil(width * scale)), int(np.ceil(height * scale))))
        image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("bomb", f"decompression bomb refused: {exc}")
    except OSError as exc:
        raise DecodeError(error_code(exc), f"cannot decode image ({image.format}): {exc}")
    except (SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError("decode_error", f"cannot decode image ({image.format}): {exc}")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not lose the pixels
        pass
    if tta == 1:  # the one view as it is (channels-last memory, which the network wants anyway): torch.stack's
        # copy would be a parallel op, starting an OpenMP team in every decode thread that spins next to the forward pass
        return main_view(to_rgb(image), preprocess).unsqueeze(0)
    return image_views(to_rgb(image), preprocess, tta)


def _torch_views(data: bytes, preprocess: Preprocess, tta: int) -> torch.Tensor:
    """The store was made with torchvision's JPEG decoder (`--decode torch`): decode the same way."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except Exception as exc:
        raise DecodeError(error_code(exc), f"cannot decode JPEG: {exc}")
    return image_views(image, preprocess, tta)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

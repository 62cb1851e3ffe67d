"""JPEG thumbnails of store rows for the service (bytes, not data URIs; cached)."""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageOps

from featx.io.decode import DecodeError, to_rgb


def thumbnail_jpeg(path: str, size: int, max_pixels: int) -> bytes:
    try:
        mtime = Path(path).stat().st_mtime_ns
    except OSError:
        mtime = None
    return _thumbnail(path, mtime, size, max_pixels)


@lru_cache(maxsize=4096)
def _thumbnail(path: str, _mtime, size: int, max_pixels: int) -> bytes:
    """A decoding failure gives a grey placeholder: a thumbnail is never worth an error page."""
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > max_pixels:
                raise DecodeError("bomb", "too many pixels")
            image.draft("RGB", (size, size))
            image = to_rgb(ImageOps.exif_transpose(image))
            image.thumbnail((size, size))
    except Exception:
        image = Image.new("RGB", (size, size), (220, 220, 220))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=80)
    return buffer.getvalue()

"""Small embedded thumbnails (base64 JPEG data URIs) so HTML pages work offline and when moved."""

from __future__ import annotations

import base64
import html
import io

from featx.io.decode import DecodeError, decode_image, read_bytes

PLACEHOLDER = ("data:image/svg+xml;base64," + base64.b64encode(
    b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eee"/>'
    b'<text x="48" y="52" font-size="11" text-anchor="middle" fill="#999">no image</text></svg>').decode())


def thumbnail_uri(path: str, size: int = 96, quality: int = 70) -> str:
    try:
        image = decode_image(read_bytes(path)[0], draft_size=size)
    except DecodeError:
        return PLACEHOLDER
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def escape(value) -> str:
    return html.escape("" if value is None else str(value))

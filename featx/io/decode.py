"""Safe reading and decoding of image files.

Decoding never raises for a bad file: `decode_image` raises `DecodeError` with a stable code,
which the extractor turns into one metadata row, and the run goes on."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import signal
import stat
import threading
import time
from contextlib import contextmanager
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from featx.io.containers import MemberError, read_member, split_member

# stable error codes recorded in meta.parquet `status` (README: "Error codes")
ERROR_CODES = ("missing", "empty", "truncated", "not_image", "bomb", "unsupported", "decode_error",
               "not_a_file", "broken_link", "symlink_loop", "unreadable", "too_large", "timeout", "outside_root")
# each file's read and decode must finish within this many seconds (a stuck network mount, a
# decoder caught by a hostile file): the file becomes a `timeout` error row and the run goes on
FILE_TIME_LIMIT_S = float(os.environ.get("FEATX_FILE_TIME_LIMIT", "60"))
MAX_FILE_BYTES = 1 << 30  # larger files are refused (`too_large`) before they are read
_READ_CHUNK = 1 << 20


class DecodeError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message




_confined_to: str | None = None  # a process that may read only under one folder (a service's extract job)


def confine_reads(root: str | None) -> None:
    """From now on this process reads images only under `root` (checked on each file as it is
    opened, so a symbolic link swapped in after the job was accepted becomes an `outside_root`
    error row). Process-wide: for a process that exists to run one job."""
    global _confined_to
    _confined_to = None if root is None else os.path.realpath(root)


def read_bytes(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256. Only regular files are read, each within
    FILE_TIME_LIMIT_S; anything else is a DecodeError with its code (never a hang). A member path
    (`SHARD.tar::MEMBER`, `FILE.parquet::COLUMN/ROW`) reads the image inside its container."""
    if split_member(path) is not None:
        try:
            data = read_member(path, MAX_FILE_BYTES)
        except MemberError as exc:
            raise DecodeError(exc.code, exc.message) from None
        if not data:
            raise DecodeError("empty", f"member is empty (0 bytes): {path}")
        return data, hashlib.sha256(data).hexdigest()
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat below then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        if _confined_to is not None:
            from featx.io.confine import PathRefused, check_opened

            try:
                check_opened(fd, path, _confined_to)
            except PathRefused as exc:
                raise DecodeError("outside_root", str(exc)) from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (FIFO, socket or device)"
            raise DecodeError("not_a_file", f"{path} is {kind}; only regular image files are read")
        if info.st_size > MAX_FILE_BYTES:
            raise DecodeError("too_large",
                              f"file is {info.st_size:,} bytes, above the limit of {MAX_FILE_BYTES:,}: {path}")
        # the signal interrupts a read stuck in the kernel (main thread); the deadline covers the rest
        with time_limit(FILE_TIME_LIMIT_S, f"reading {path}"):
            deadline = time.monotonic() + FILE_TIME_LIMIT_S
            chunks = []
            while True:
                try:
                    chunk = os.read(fd, _READ_CHUNK)
                except OSError as exc:
                    raise DecodeError("unreadable", f"cannot read {path}: {exc.strerror}") from None
                if not chunk:
                    break
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise DecodeError("timeout", f"reading {path} took more than {FILE_TIME_LIMIT_S:g} s; "
                                      "check the storage it lives on (FEATX_FILE_TIME_LIMIT sets the limit)")
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if not data:
        raise DecodeError("empty", f"file is empty (0 bytes): {path}")
    return data, hashlib.sha256(data).hexdigest()


def _open_error(path: str, exc: OSError) -> DecodeError:
    if exc.errno == errno.ELOOP:
        return DecodeError("symlink_loop", f"symbolic link loop: {path}; point the link at a real file")
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            return DecodeError("broken_link", f"symbolic link to a missing file: {path} -> {os.readlink(path)}")
        return DecodeError("missing", f"file not found: {path}")
    if exc.errno == errno.EACCES:
        return DecodeError("unreadable", f"permission denied: {path}")
    return DecodeError("unreadable", f"cannot open {path}: {exc.strerror}")


@contextmanager
def time_limit(seconds: float, what: str):
    """DecodeError('timeout') when the block runs longer than `seconds`. Uses SIGALRM, so it only
    acts in a process's main thread (DataLoader workers, the CLI); elsewhere the block runs without
    a limit. A timer someone else set (pytest-timeout) is put back afterwards, less the time spent."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer = signal.getitimer(signal.ITIMER_REAL)[0]
    if outer and outer <= seconds:  # the outer timer fires first anyway
        yield
        return

    def expire(_signum, _frame):
        raise DecodeError("timeout", f"{what} took more than {seconds:g} s (FEATX_FILE_TIME_LIMIT sets the limit)")

    started = time.monotonic()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(1e-3, outer - (time.monotonic() - started)))


FULL_SIZE_KEY = "featx_full_size"  # Image.info key: (width, height) before JPEG draft scaling


def decode_image(data: bytes, draft_size: int | Callable[[tuple[int, int]], tuple[int, int]] | None = None, *,
                 max_pixels: int | None = None) -> Image.Image:
    """Decode bytes to an RGB image, safely. `draft_size` lets a JPEG decode at a reduced DCT scale
    (much faster for big photos): an int keeps the shorter side ≥ draft_size; a function maps the
    stored (width, height) to the smallest size that must still be covered. Images above
    `max_pixels` (default: Pillow's limit) are refused as decompression bombs, by an explicit check
    that is safe in any thread (no process-wide warning filters)."""
    if not data:
        raise DecodeError("empty", "the file is empty (0 bytes)")
    with time_limit(FILE_TIME_LIMIT_S, "decoding"):
        return _decode(data, draft_size, max_pixels or Image.MAX_IMAGE_PIXELS)


def _decode(data: bytes, draft_size, max_pixels: int) -> Image.Image:
    image = open_header(data, max_pixels)
    stored = image.size
    _load(image, draft_size)
    try:
        image = ImageOps.exif_transpose(image)
    except DecodeError:
        raise
    except Exception:  # a broken EXIF block must not lose the pixels
        pass
    try:
        rgb = to_rgb(image)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError("decode_error", f"cannot convert image ({image.format}, mode {image.mode}) to RGB: "
                          f"{type(exc).__name__}: {exc}") from None
    if rgb.size != stored and rgb.size != stored[::-1]:  # decoded at a DCT scale: keep the full size,
        # upright, for views whose geometry is rounded from it (the letterbox's side lengths)
        rgb.info[FULL_SIZE_KEY] = stored if (rgb.width >= rgb.height) == (stored[0] >= stored[1]) else stored[::-1]
    return rgb


def open_header(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """The image with only its header read, or DecodeError (not an image; a decompression bomb:
    above `max_pixels`, default Pillow's limit)."""
    max_pixels = max_pixels or Image.MAX_IMAGE_PIXELS
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("bomb", f"decompression bomb refused: {exc}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not_image", "not an image file Pillow can identify") from None
    except DecodeError:  # the time limit
        raise
    except Exception as exc:
        raise DecodeError(error_code(exc), f"cannot open image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise DecodeError("bomb", f"decompression bomb refused: {width}x{height} = {width * height} pixels, "
                                  f"above the limit of {max_pixels}")
    return image


def _load(image: Image.Image, draft_size) -> None:
    """Decode the pixels (a JPEG at the draft scale `draft_size` allows; the first frame of an
    animation), or DecodeError with the code of what went wrong."""
    try:
        if draft_size and image.format == "JPEG":
            w, h = image.size
            if callable(draft_size):
                request = draft_size((w, h))
            else:
                scale = draft_size / min(w, h)
                request = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
            image.draft("RGB", request)
        image.seek(0)
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("bomb", f"decompression bomb refused: {exc}") from None
    except OSError as exc:
        raise DecodeError(error_code(exc), f"cannot decode image ({image.format}): {exc}") from None
    except DecodeError:  # the time limit
        raise
    except Exception as exc:  # a hostile file can make a plugin raise anything (TypeError, ...)
        raise DecodeError("decode_error",
                          f"cannot decode image ({image.format}): {type(exc).__name__}: {exc}") from None


def error_code(exc: Exception) -> str:
    """The error code for a decoder's exception: `truncated` when the data ends early."""
    message = str(exc).lower()
    return "truncated" if any(w in message for w in ("truncat", "broken data", "premature end")) else "decode_error"


def stretch_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Map the image's own range min..max linearly onto 0..255. A constant image has no range:
    it keeps its level within its type's range (16-bit / 257; 32-bit and float clipped to 0..255)."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if high > low:
        return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)
    level = low / 257.0 if mode.startswith("I;16") else low
    return np.full(values.shape, np.clip(np.rint(level), 0, 255), np.uint8)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB from any mode: alpha composited on white, 16-bit and float greyscale stretched from the
    image's own min..max to 0..255 (a 12-bit sensor's 0..4095 keeps its full contrast, nothing is
    clipped), CMYK converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(stretch_to_uint8(np.asarray(image), mode), "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
        if mode == "RGB":
            return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise DecodeError("unsupported", f"unsupported image mode '{mode}'")

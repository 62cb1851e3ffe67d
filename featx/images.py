"""Image sources (class folders, CSV/Parquet manifests, globs) and safe decoding.

Decoding never raises for a bad file: `decode_image` raises `DecodeError` with a stable code,
which the extractor turns into one metadata row, and the run goes on."""

from __future__ import annotations

import errno
import glob as globlib
import hashlib
import io
import os
import signal
import stat
import threading
import time
from contextlib import contextmanager
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from featx.errors import InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
MANIFEST_SUFFIXES = (".csv", ".parquet")

# stable error codes recorded in meta.parquet `status` (README: "Error codes")
ERROR_CODES = ("missing", "empty", "truncated", "not_image", "bomb", "unsupported", "decode_error",
               "not_a_file", "broken_link", "symlink_loop", "unreadable", "too_large", "timeout")
# each file's read and decode must finish within this many seconds (a stuck network mount, a
# decoder caught by a hostile file): the file becomes a `timeout` error row and the run goes on
FILE_TIME_LIMIT_S = float(os.environ.get("FEATX_FILE_TIME_LIMIT", "60"))
MAX_FILE_BYTES = 1 << 30  # larger files are refused (`too_large`) before they are read
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: str | None = None
    split: str | None = None
    group: str | None = None  # patient, part, acquisition run: rows that must stay on one side of a split


class DecodeError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- sources -----------------------------------------------------------------------------------

def is_glob(text: str | Path) -> bool:
    return any(ch in str(text) for ch in "*?[")


def scan_inputs(inputs: str | Path | list[str | Path], missing_ok: bool = False) -> list[ImageRecord]:
    """Expand folders, manifests and globs into image records, sorted by path, one per file.
    The same file from two places must agree on label, split and group, else InputError.
    `missing_ok`: a path that does not exist is kept as a record (it becomes an error row)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a folder, a CSV/Parquet manifest or a glob")
    records: dict[str, tuple[ImageRecord, str]] = {}
    for item in items:
        if missing_ok and not os.path.lexists(item) and not is_glob(item):
            found = [(ImageRecord(_entry_path(Path(item))), f"input '{item}'")]
        else:
            found = _scan_one(str(item))
        for record, where in found:
            _add(records, record, where)
    if not records:
        raise InputError(f"no image files found in {', '.join(map(str, items))}; allowed suffixes: "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return sorted((record for record, _ in records.values()), key=lambda r: r.path)


def _add(records: dict[str, tuple[ImageRecord, str]], record: ImageRecord, where: str) -> None:
    """One record per file. A second listing may fill in what the first left empty (a folder and a
    file inside it given together); two different values are refused, naming both places."""
    if record.path not in records:
        records[record.path] = (record, where)
        return
    first, first_where = records[record.path]
    merged = {}
    for field in ("label", "split", "group"):
        a, b = getattr(first, field), getattr(record, field)
        if a is not None and b is not None and a != b:
            raise InputError(f"'{record.path}' is listed twice with different {field}s: {field} "
                             f"'{a}' at {first_where} and {field} '{b}' at {where}; "
                             "keep one row per image (paths are compared after resolving '..' and symlinks)")
        merged[field] = a if a is not None else b
    records[record.path] = (ImageRecord(record.path, **merged), first_where)


def _scan_one(item: str) -> list[tuple[ImageRecord, str]]:
    path = Path(item)
    if path.is_dir():
        return [(r, f"folder {path}") for r in scan_folder(path)]
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        from featx.manifest import read_manifest_rows

        where = "line" if path.suffix.lower() == ".csv" else "row"
        return [(ImageRecord(row.path, row.label, row.split, row.group), f"{path.name} {where} {row.line}")
                for row in read_manifest_rows(path)]
    if path.is_file():
        return [(ImageRecord(str(path.resolve())), f"input '{item}'")]
    if os.path.lexists(path):  # a FIFO, a dangling link, a link loop: an error row, never a hang
        return [(ImageRecord(_entry_path(path)), f"input '{item}'")]
    if is_glob(item):
        matches = sorted(globlib.glob(item, recursive=True))
        return [(ImageRecord(_entry_path(Path(m))), f"glob '{item}'") for m in matches if _is_image_entry(Path(m))]
    raise InputError(f"input '{item}' does not exist; pass a folder, a .csv/.parquet manifest, an image "
                     "file or a glob such as 'images/**/*.jpg'")


def _is_image_entry(path: Path) -> bool:
    """An entry named like an image: a regular file, or anything else that must become an error
    row rather than vanish (a FIFO, a dangling link, a link loop, a folder named x.jpg)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and os.path.lexists(path)


def _entry_path(path: Path) -> str:
    from featx.manifest import normalise_path

    return normalise_path(str(path), Path.cwd())


def scan_folder(root: Path) -> list[ImageRecord]:
    """Class subfolders give labels; a top-level train/val/test level gives the split."""
    root = root.resolve()
    top = [p for p in root.iterdir() if p.is_dir()]
    split_dirs = [p for p in top if p.name.lower() in SPLIT_NAMES]
    if split_dirs:
        return [ImageRecord(r.path, r.label, d.name.lower()) for d in sorted(split_dirs) for r in _scan_labelled(d)]
    return _scan_labelled(root)


def _scan_labelled(root: Path) -> list[ImageRecord]:
    records = []
    # os.walk does not follow links to folders, so a link loop cannot make the scan run forever
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        for name in sorted(files + [d for d in subfolders if Path(d).suffix.lower() in IMAGE_SUFFIXES]):
            file = Path(folder) / name
            if not _is_image_entry(file):
                continue
            relative = file.relative_to(root)
            label = relative.parts[0] if len(relative.parts) > 1 else None
            records.append(ImageRecord(_entry_path(file), label))
    return records


def read_manifest(path: Path) -> list[ImageRecord]:
    """The records of a CSV/Parquet manifest (see featx.manifest for the format and its checks)."""
    return [record for record, _ in _scan_one(str(path))]


# --- decoding ----------------------------------------------------------------------------------

def read_bytes(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256. Only regular files are read, each within
    FILE_TIME_LIMIT_S; anything else is a DecodeError with its code (never a hang)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat below then refuses it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _open_error(path, exc) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (FIFO, socket or device)"
            raise DecodeError("not_a_file", f"{path} is {kind}; only regular image files are read")
        if info.st_size > MAX_FILE_BYTES:
            raise DecodeError("too_large", f"file is {info.st_size:,} bytes, above the limit of {MAX_FILE_BYTES:,}: {path}")
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


def decode_image(data: bytes, draft_size: int | Callable[[tuple[int, int]], tuple[int, int]] | None = None
                 ) -> Image.Image:
    """Decode bytes to an RGB image, safely. `draft_size` lets a JPEG decode at a reduced DCT scale
    (much faster for big photos): an int keeps the shorter side ≥ draft_size; a function maps the
    stored (width, height) to the smallest size that must still be covered."""
    with time_limit(FILE_TIME_LIMIT_S, "decoding"):
        return _decode(data, draft_size)


def _decode(data: bytes, draft_size) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("bomb", f"decompression bomb refused: {exc}")
        except Image.UnidentifiedImageError:
            raise DecodeError("not_image", "not an image file Pillow can identify")
        except DecodeError:  # the time limit
            raise
        except Exception as exc:
            raise DecodeError(error_code(exc), f"cannot open image: {exc}")
        stored = image.size
        try:
            if draft_size and image.format == "JPEG":
                w, h = image.size
                if callable(draft_size):
                    request = draft_size((w, h))
                else:
                    scale = draft_size / min(w, h)
                    request = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
                image.draft("RGB", request)
            image.seek(0)  # animated images: the first frame
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("bomb", f"decompression bomb refused: {exc}")
        except OSError as exc:
            raise DecodeError(error_code(exc), f"cannot decode image ({image.format}): {exc}")
        except DecodeError:  # the time limit
            raise
        except Exception as exc:  # a hostile file can make a plugin raise anything (TypeError, ...)
            raise DecodeError("decode_error", f"cannot decode image ({image.format}): {type(exc).__name__}: {exc}")
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
                              f"{type(exc).__name__}: {exc}")
        if rgb.size != stored and rgb.size != stored[::-1]:  # decoded at a DCT scale: keep the full size,
            # upright, for views whose geometry is rounded from it (the letterbox's side lengths)
            rgb.info[FULL_SIZE_KEY] = stored if (rgb.width >= rgb.height) == (stored[0] >= stored[1]) else stored[::-1]
        return rgb


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

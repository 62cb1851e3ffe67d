"""Image sources (class folders, CSV/Parquet manifests, globs) and safe decoding.

Decoding never raises for a bad file: `decode_image` raises `DecodeError` with a stable code,
which the extractor turns into one metadata row, and the run goes on."""

from __future__ import annotations

import glob as globlib
import hashlib
import io
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

# stable error codes recorded in meta.parquet `status`
ERROR_CODES = ("missing", "empty", "truncated", "not_image", "bomb", "unsupported", "decode_error")


@dataclass(frozen=True)
class ImageRecord:
    path: str
    label: str | None = None
    split: str | None = None


class DecodeError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# --- sources -----------------------------------------------------------------------------------

def is_glob(text: str | Path) -> bool:
    return any(ch in str(text) for ch in "*?[")


def scan_inputs(inputs: str | Path | list[str | Path], missing_ok: bool = False) -> list[ImageRecord]:
    """Expand folders, manifests and globs into image records, sorted by path, without duplicates.
    `missing_ok`: a path that does not exist is kept as a record (it becomes an error row)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no inputs given; pass a folder, a CSV/Parquet manifest or a glob")
    records: dict[str, ImageRecord] = {}
    for item in items:
        if missing_ok and not Path(item).exists() and not is_glob(item):
            records.setdefault(str(Path(item).resolve()), ImageRecord(str(Path(item).resolve())))
            continue
        for record in _scan_one(str(item)):
            records.setdefault(record.path, record)
    if not records:
        raise InputError(f"no image files found in {', '.join(map(str, items))}; allowed suffixes: "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))}")
    return sorted(records.values(), key=lambda r: r.path)


def _scan_one(item: str) -> list[ImageRecord]:
    path = Path(item)
    if path.is_dir():
        return scan_folder(path)
    if path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path)
    if path.is_file():
        return [ImageRecord(str(path.resolve()))]
    if is_glob(item):
        matches = sorted(globlib.glob(item, recursive=True))
        return [ImageRecord(str(Path(m).resolve())) for m in matches
                if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_SUFFIXES]
    raise InputError(f"input '{item}' does not exist; pass a folder, a .csv/.parquet manifest, an image "
                     "file or a glob such as 'images/**/*.jpg'")


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
    for file in sorted(root.rglob("*")):
        if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        relative = file.relative_to(root)
        label = relative.parts[0] if len(relative.parts) > 1 else None
        records.append(ImageRecord(str(file), label))
    return records


def read_manifest(path: Path) -> list[ImageRecord]:
    import pandas as pd

    table = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    if "path" not in table.columns:
        raise InputError(f"manifest '{path}' has columns {list(table.columns)}; it needs a 'path' column "
                         "(optional: 'label', 'split')")
    base = path.resolve().parent

    def optional(row, column):
        value = row.get(column)
        return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

    records = []
    for row in table.to_dict("records"):
        file = Path(str(row["path"]))
        records.append(ImageRecord(str(file if file.is_absolute() else (base / file).resolve()),
                                   optional(row, "label"), optional(row, "split")))
    return records


# --- decoding ----------------------------------------------------------------------------------

def read_bytes(path: str) -> tuple[bytes, str]:
    """The file's bytes and their sha256; DecodeError for a missing or empty file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DecodeError("missing", f"file not found: {path}")
    except OSError as exc:
        raise DecodeError("missing", f"cannot read {path}: {exc}")
    if not data:
        raise DecodeError("empty", f"file is empty (0 bytes): {path}")
    return data, hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, draft_size: int | Callable[[tuple[int, int]], tuple[int, int]] | None = None
                 ) -> Image.Image:
    """Decode bytes to an RGB image, safely. `draft_size` lets a JPEG decode at a reduced DCT scale
    (much faster for big photos): an int keeps the shorter side ≥ draft_size; a function maps the
    stored (width, height) to the smallest size that must still be covered."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DecodeError("bomb", f"decompression bomb refused: {exc}")
        except Image.UnidentifiedImageError:
            raise DecodeError("not_image", "not an image file Pillow can identify")
        except Exception as exc:
            raise DecodeError(error_code(exc), f"cannot open image: {exc}")
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
        except (SyntaxError, ValueError, EOFError) as exc:
            raise DecodeError("decode_error", f"cannot decode image ({image.format}): {exc}")
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block must not lose the pixels
            pass
        return to_rgb(image)


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

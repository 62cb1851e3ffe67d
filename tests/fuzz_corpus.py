"""A seeded corpus of good, mutated and certainly-bad image files, for the decode fuzz test
(tests/test_fuzz_decode.py, 500 tries) and benchmark (benchmarks/fuzz_decode.py, 10,000 tries).

Each try is one file system entry with what must happen to it:
- `good`: a valid image in one of many formats and modes: it must decode (status ok);
- `mutated`: a good file with flipped bytes, a truncation or a corrupted header: it may decode
  (a flip inside pixel data is still an image) or fail, but only as an error row with a code;
- `bad`: certainly not a usable image (zero bytes, SVG, text, absurd declared size, a folder
  named like an image, a symlink loop, a dangling link, a FIFO): it must be an error row."""

from __future__ import annotations

import io
import os
import struct
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

GOOD_FORMATS = ("png-rgb", "png-l", "png-16bit", "png-rgba", "png-palette-alpha", "jpeg-rgb", "jpeg-l",
                "jpeg-cmyk", "jpeg-progressive", "gif-animated", "tiff-rgb", "tiff-16bit", "webp", "bmp", "ppm")
BAD_KINDS = ("zero-byte", "text", "svg", "png-absurd-size", "jpeg-absurd-size", "gif-absurd-size",
             "signature-only", "directory", "symlink-loop", "dangling-link", "fifo")
MUTATIONS = ("flip", "truncate", "header")
# the error codes a certainly-bad entry may get (any code is an error row; these are the right ones)
BAD_CODES = {"zero-byte": {"empty"}, "text": {"not_image"}, "svg": {"not_image"}, "png-absurd-size": {"bomb"},
             "jpeg-absurd-size": {"bomb"}, "gif-absurd-size": {"bomb"}, "directory": {"not_a_file"},
             "symlink-loop": {"symlink_loop"}, "dangling-link": {"broken_link"}, "fifo": {"not_a_file"},
             "signature-only": {"truncated", "decode_error", "not_image"}}


@dataclass(frozen=True)
class Case:
    index: int
    kind: str  # good, mutated, bad
    detail: str  # the format, format+mutation, or the bad kind
    name: str


def encode_good(fmt: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """A small valid image of `fmt` with seeded random content, and its file suffix."""
    w, h = int(rng.integers(8, 72)), int(rng.integers(8, 72))
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    grey = rgb.convert("L")
    buffer = io.BytesIO()
    if fmt == "png-rgb":
        rgb.save(buffer, "PNG")
    elif fmt == "png-l":
        grey.save(buffer, "PNG")
    elif fmt == "png-16bit":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(buffer, "PNG")
    elif fmt == "png-rgba":
        rgb.convert("RGBA").save(buffer, "PNG")
    elif fmt == "png-palette-alpha":
        palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        palette.info["transparency"] = 0
        palette.save(buffer, "PNG", transparency=0)
    elif fmt == "jpeg-rgb":
        rgb.save(buffer, "JPEG", quality=int(rng.integers(40, 95)))
    elif fmt == "jpeg-l":
        grey.save(buffer, "JPEG")
    elif fmt == "jpeg-cmyk":
        rgb.convert("CMYK").save(buffer, "JPEG")
    elif fmt == "jpeg-progressive":
        rgb.save(buffer, "JPEG", progressive=True)
    elif fmt == "gif-animated":
        frames = [rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8), grey.convert("P")]
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    elif fmt == "tiff-rgb":
        rgb.save(buffer, "TIFF", compression="tiff_lzw")
    elif fmt == "tiff-16bit":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(buffer, "TIFF")
    elif fmt == "webp":
        rgb.save(buffer, "WEBP", quality=80)
    elif fmt == "bmp":
        rgb.save(buffer, "BMP")
    elif fmt == "ppm":
        rgb.save(buffer, "PPM")
    else:
        raise ValueError(fmt)
    suffix = {"png": ".png", "jpeg": ".jpg", "gif": ".gif", "tiff": ".tif", "webp": ".webp", "bmp": ".bmp",
              "ppm": ".ppm"}[fmt.split("-")[0]]
    return buffer.getvalue(), suffix


def mutate(data: bytes, how: str, rng: np.random.Generator) -> bytes:
    array = bytearray(data)
    if how == "flip":
        for _ in range(int(rng.integers(1, 9))):
            position = int(rng.integers(0, len(array)))
            array[position] ^= 1 << int(rng.integers(0, 8))
        return bytes(array)
    if how == "truncate":
        return bytes(array[: int(rng.integers(1, len(array)))])
    if how == "header":  # overwrite a few bytes of the first 32 with random ones
        for _ in range(int(rng.integers(1, 5))):
            array[int(rng.integers(0, min(32, len(array))))] = int(rng.integers(0, 256))
        return bytes(array)
    raise ValueError(how)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def absurd(kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    side = int(rng.integers(40_000, 65_535))
    if kind == "png-absurd-size":
        ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                + _png_chunk(b"IEND", b"")), ".png"
    if kind == "jpeg-absurd-size":
        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), "red").save(buffer, "JPEG")
        data = bytearray(buffer.getvalue())
        sof = data.find(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", side, side)  # height, width in the frame header
        return bytes(data), ".jpg"
    if kind == "gif-absurd-size":
        buffer = io.BytesIO()
        Image.new("P", (8, 8), 1).save(buffer, "GIF")
        data = bytearray(buffer.getvalue())
        data[6:10] = struct.pack("<HH", side, side)  # logical screen
        descriptor = data.find(b"\x2c", 13)
        data[descriptor + 5:descriptor + 9] = struct.pack("<HH", side, side)  # the image's own size
        return bytes(data), ".gif"
    raise ValueError(kind)


def cases(n: int, seed: int = 0) -> list[Case]:
    """`n` tries: about 20% good, 50% mutated, 30% certainly bad, each kind visited in turn."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.2:
            kind, detail = "good", GOOD_FORMATS[i % len(GOOD_FORMATS)]
        elif roll < 0.7:
            kind = "mutated"
            fmt = GOOD_FORMATS[int(rng.integers(len(GOOD_FORMATS)))]
            mutation = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
            detail = f"{fmt}+{mutation}"
        else:
            kind, detail = "bad", BAD_KINDS[int(rng.integers(len(BAD_KINDS)))]
        out.append(Case(i, kind, detail, f"{i:05d}-{detail.replace('+', '-')}"))
    return out


def materialise(case: Case, folder: Path, seed: int = 0) -> Path:
    """Create the case's entry in `folder`; its content depends only on (seed, case.index)."""
    rng = np.random.default_rng([seed, case.index])
    if case.kind in ("good", "mutated"):
        fmt, _, how = case.detail.partition("+")
        data, suffix = encode_good(fmt, rng)
        path = folder / (case.name + suffix)
        path.write_bytes(mutate(data, how, rng) if how else data)
        return path
    kind = case.detail
    if kind in ("png-absurd-size", "jpeg-absurd-size", "gif-absurd-size"):
        data, suffix = absurd(kind, rng)
        path = folder / (case.name + suffix)
        path.write_bytes(data)
    elif kind == "zero-byte":
        path = folder / (case.name + ".jpg")
        path.write_bytes(b"")
    elif kind == "text":
        path = folder / (case.name + ".jpg")
        path.write_text("this is not an image, only text named like one\n" * int(rng.integers(1, 20)))
    elif kind == "svg":
        path = folder / (case.name + ".png")  # named .png: suffixes are not trusted
        path.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
                        '<rect width="64" height="64" fill="red"/></svg>\n')
    elif kind == "signature-only":
        data, suffix = encode_good(("png-rgb", "jpeg-rgb", "gif-animated", "webp")[int(rng.integers(4))], rng)
        path = folder / (case.name + suffix)
        path.write_bytes(data[: int(rng.integers(4, 17))])
    elif kind == "directory":
        path = folder / (case.name + ".jpg")
        path.mkdir()
        (path / "inside.txt").write_text("a folder named like an image")
    elif kind == "symlink-loop":
        path = folder / (case.name + ".png")
        other = folder / (case.name + "-other.lnk")
        os.symlink(other.name, path)
        os.symlink(path.name, other)
    elif kind == "dangling-link":
        path = folder / (case.name + ".jpg")
        os.symlink(case.name + "-gone.jpg", path)
    elif kind == "fifo":
        path = folder / (case.name + ".png")
        os.mkfifo(path)
    else:
        raise ValueError(kind)
    return path


@dataclass
class Outcome:
    status: str  # ok or an error code; "crash" for any other exception
    seconds: float
    detail: str = ""


def decode_outcome(path: Path, preprocess) -> Outcome:
    """What the extraction's reader does with one file: read, decode, make the network input."""
    from featx.io.decode import DecodeError, decode_image, read_bytes
    from featx.preprocess.views import image_views

    start = time.perf_counter()
    try:
        data, _ = read_bytes(str(path))
        image = decode_image(data, draft_size=preprocess.resize_size)
        views = image_views(image, preprocess, 1)
        if views.shape != (1, 3, preprocess.crop_size, preprocess.crop_size):
            return Outcome("crash", time.perf_counter() - start, f"views of shape {tuple(views.shape)}")
        return Outcome("ok", time.perf_counter() - start)
    except DecodeError as exc:
        return Outcome(exc.code, time.perf_counter() - start, exc.message)
    except Exception:  # anything else is a crash: the reader would hide it as decode_error
        return Outcome("crash", time.perf_counter() - start, traceback.format_exc(limit=3))


def judge(case: Case, outcome: Outcome, hang_after_s: float) -> str | None:
    """Why this outcome misses the targets, or None when it meets them."""
    from featx.io.decode import ERROR_CODES

    if outcome.status == "crash":
        return f"crash: {outcome.detail}"
    if outcome.seconds > hang_after_s:
        return f"hang: {outcome.seconds:.1f} s"
    if outcome.status != "ok" and outcome.status not in ERROR_CODES:
        return f"unknown code {outcome.status}"
    if case.kind == "good" and outcome.status != "ok":
        return f"good file lost: {outcome.status} {outcome.detail}"
    if case.kind == "bad" and outcome.status not in BAD_CODES[case.detail]:
        return f"bad file got {outcome.status}, expected one of {sorted(BAD_CODES[case.detail])}"
    return None

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from featx.errors import InputError
from featx.io.decode import DecodeError, decode_image, read_bytes
from featx.io.sources import scan_inputs
from tests.conftest import make_class_folder


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size: what a decompression bomb looks like to the decoder."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND",
                                                                                                             b"")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_truncated_jpeg_is_reported():
    data = encode(Image.new("RGB", (64, 64), "red"), "JPEG")
    with pytest.raises(DecodeError) as info:
        decode_image(data[: len(data) // 2])
    assert info.value.code == "truncated"


def test_text_file_is_not_an_image():
    with pytest.raises(DecodeError) as info:
        decode_image(b"hello, I am text pretending to be a JPEG")
    assert info.value.code == "not_image"


def test_decompression_bomb_is_refused():
    with pytest.raises(DecodeError) as info:
        decode_image(png_header_only(20000, 20000))
    assert info.value.code == "bomb"


def test_warning_size_bomb_is_refused_too():
    # above Pillow's warning limit (89 Mpx) but below its error limit: featx refuses as well
    with pytest.raises(DecodeError) as info:
        decode_image(png_header_only(10000, 10000))
    assert info.value.code == "bomb"


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DecodeError, match="not found") as info:
        read_bytes(str(tmp_path / "nope.jpg"))
    assert info.value.code == "missing"
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(DecodeError, match="0 bytes") as info:
        read_bytes(str(tmp_path / "zero.jpg"))
    assert info.value.code == "empty"


def test_cmyk_jpeg_becomes_rgb():
    image = decode_image(encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG"))  # pure red in CMYK
    r, g, b = np.asarray(image).reshape(-1, 3).mean(0)
    assert image.mode == "RGB" and r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped():
    values = np.full((8, 8), 32768, dtype=np.uint16)  # mid grey in 16 bits
    image = decode_image(encode(Image.fromarray(values), "PNG"))
    assert image.mode == "RGB"
    assert abs(int(np.asarray(image)[0, 0, 0]) - 128) <= 1  # clipping would give 255


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # fully transparent black
    assert np.asarray(decode_image(encode(rgba, "PNG"))).min() == 255


def test_palette_with_transparency_and_animation_first_frame():
    frames = [Image.new("P", (8, 8), i) for i in (1, 2)]
    for frame in frames:
        frame.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = decode_image(data)
    assert image.mode == "RGB" and tuple(np.asarray(image)[0, 0]) == (255, 0, 0)  # frame 1 is red


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_jpeg_draft_keeps_shorter_side_at_least_requested():
    data = encode(Image.new("RGB", (1600, 1200), "green"), "JPEG")
    image = decode_image(data, draft_size=256)
    assert min(image.size) >= 256 and max(image.size) < 1600


def test_scan_folder_labels_and_splits(tmp_path):
    make_class_folder(tmp_path / "ds", per_class=2, splits=("train", "val"))
    records = scan_inputs(tmp_path / "ds")
    assert len(records) == 8
    assert {r.split for r in records} == {"train", "val"}
    assert {r.label for r in records} == {"cats", "dogs"}


def test_flat_folder_has_no_labels_and_manifest_gives_them(tmp_path):
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    assert {r.label for r in scan_inputs(tmp_path)} == {None}
    (tmp_path / "list.csv").write_text("path,label,split\n0.png,a,train\n1.png,b,test\n")
    records = scan_inputs(tmp_path / "list.csv")
    assert [(r.label, r.split) for r in records] == [("a", "train"), ("b", "test")]


def test_glob_and_bad_input_messages(tmp_path):
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    assert len(scan_inputs(str(tmp_path / "*.png"))) == 2
    with pytest.raises(InputError, match="does not exist"):
        scan_inputs(tmp_path / "missing")
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(InputError, match="needs a 'path' column"):
        scan_inputs(tmp_path / "bad.csv")


def test_decoder_type_error_is_a_decode_error(tmp_path):
    # found by benchmarks/fuzz_decode.py: a bit flip in a 16-bit TIFF's tags made Pillow's load()
    # raise TypeError ('IFDRational' object cannot be interpreted as an integer)
    import warnings

    from tests.fuzz_corpus import cases, materialise

    case = cases(10_000, seed=0)[4042]
    assert case.detail == "tiff-16bit+flip"
    data = materialise(case, tmp_path, seed=0).read_bytes()
    with warnings.catch_warnings(), pytest.raises(DecodeError) as info:
        warnings.simplefilter("ignore")
        decode_image(data)
    assert info.value.code == "decode_error" and "TypeError" in info.value.message


def test_16bit_greyscale_is_stretched_by_its_own_range():
    # a 12-bit sensor's gradient, 1000..4000 out of 0..65535: dividing by 257 would leave it at 4..16
    gradient = np.tile(np.linspace(1000, 4000, 64).astype(np.uint16), (8, 1))
    image = np.asarray(decode_image(encode(Image.fromarray(gradient), "PNG")))
    assert image.shape == (8, 64, 3)
    assert image[..., 0].min() == 0 and image[..., 0].max() == 255
    assert np.all(np.diff(image[0, :, 0].astype(int)) >= 0)  # order kept
    assert np.array_equal(image[..., 0], image[..., 2])  # still grey

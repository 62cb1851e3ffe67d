import io

import numpy as np
import pytest
import torch
from conftest import HYMENOPTERA, needs_hymenoptera
from PIL import Image

from featx.errors import InputError
from featx.io.decode import decode_image
from featx.preprocess.config import Preprocess
from featx.preprocess.views import PIL_FILTERS, PIXEL_TOLERANCE, draft_request, image_views, letterbox_fill

PRE = Preprocess(resize_size=64, crop_size=56, interpolation="bilinear", mean=(0.5, 0.25, 0.75), std=(0.2, 0.2, 0.2))
RED, BLUE, GREY = (255, 0, 0), (0, 0, 255), (128, 128, 128)


def bordered(width=200, height=100, border=20) -> Image.Image:
    """Grey, with a red band along the left edge and a blue band along the right edge."""
    pixels = np.full((height, width, 3), GREY, np.uint8)
    pixels[:, :border] = RED
    pixels[:, -border:] = BLUE
    return Image.fromarray(pixels)


def views(image, mode, tta=1):
    return image_views(image, PRE.with_resize(mode), tta).numpy().transpose(0, 2, 3, 1)  # (tta, H, W, 3)


def near(pixel, colour, tolerance=12):
    return np.abs(pixel.astype(int) - colour).max() <= tolerance


@pytest.mark.parametrize("as_tensor", [False, True])  # PIL (worker decode) and tensor (device decode) paths
def test_resize_modes_keep_or_lose_the_borders(as_tensor):
    image = bordered()
    source = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) if as_tensor else image
    crop, full, pad = (views(source, mode)[0] for mode in ("crop", "full", "pad"))
    assert crop.shape == full.shape == pad.shape == (56, 56, 3)
    # crop: the centre square of a 2:1 image, both coloured bands are cut away
    assert all(near(crop[28, x], GREY) for x in (0, 28, 55))
    # full: the whole width squashed in, red on the left edge, blue on the right, grey between
    assert near(full[28, 0], RED) and near(full[28, 55], BLUE) and near(full[28, 28], GREY)
    assert near(full[0, 2], RED) and near(full[55, 53], BLUE)  # top to bottom: nothing cut
    # pad: the whole image at its own aspect (56 x 28) in the middle rows, letterbox fill above and below
    fill = letterbox_fill(PRE)
    assert fill == (128, 64, 191)
    assert all(near(pad[y, x], fill, 0) for y in (0, 13) for x in (0, 28, 55))
    assert all(near(pad[y, x], fill, 0) for y in (42, 55) for x in (0, 28, 55))
    assert near(pad[28, 0], RED) and near(pad[28, 55], BLUE) and near(pad[28, 28], GREY)
    assert near(pad[15, 1], RED) and near(pad[40, 54], BLUE)


def test_resize_modes_with_tta_give_distinct_shifted_views():
    for mode in ("crop", "full", "pad"):
        stack = views(bordered(), mode, tta=6)
        assert stack.shape == (6, 56, 56, 3)
        assert np.array_equal(stack[1], stack[0][:, ::-1])  # view 2 is the flip of view 1
        assert not np.array_equal(stack[2], stack[3])  # opposite corners differ


def test_unknown_resize_mode_is_refused():
    with pytest.raises(InputError, match=r"unknown --resize 'stretch'; allowed: crop, full, pad"):
        PRE.with_resize("stretch")


def test_preprocess_from_an_old_store_reads_as_crop():
    old = {k: v for k, v in PRE.to_dict().items() if k != "resize"}
    assert Preprocess.from_dict(old).resize == "crop"
    assert Preprocess.from_dict(PRE.with_resize("pad").to_dict()).resize == "pad"


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def _photo_like(width=2400, height=1800) -> Image.Image:
    """Smooth shapes and edges with some texture: what photos look like to a resampler."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([128 + 100 * np.sin(9 * x + 3 * y), 128 + 90 * np.cos(13 * y * x * 4), 255 * (x > y)], -1)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("mode", ["crop", "full", "pad"])
def test_draft_decoding_stays_within_the_recorded_tolerance(mode):
    pre = PRE.with_resize(mode)
    data = _jpeg(_photo_like())
    full_size = decode_image(data)
    drafted = decode_image(data, draft_size=lambda size: draft_request(size, pre))
    assert max(drafted.size) <= 2400 / 4  # the decoder really worked at a reduced DCT scale
    reference = _exact_view(full_size, pre)
    fast = image_views(drafted, pre)[0].numpy().transpose(1, 2, 0).astype(float)
    assert np.abs(fast - reference).mean() <= PIXEL_TOLERANCE


def _exact_view(image: Image.Image, pre: Preprocess) -> np.ndarray:
    """The view computed the slow, exact way: full-size pixels, one resample, no reduce()."""
    c, flt = pre.crop_size, PIL_FILTERS[pre.interpolation]
    w, h = image.size
    if pre.resize == "full":
        out = image.resize((c, c), flt)
    elif pre.resize == "pad":
        s = c / max(w, h)
        out = Image.new("RGB", (c, c), letterbox_fill(pre))
        inner = image.resize((round(w * s), round(h * s)), flt)
        out.paste(inner, ((c - inner.size[0]) // 2, (c - inner.size[1]) // 2))
    else:
        side = c * min(w, h) / pre.resize_size
        out = image.resize((c, c), flt, box=((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2))
    return np.asarray(out).astype(float)


def test_draft_request_covers_every_view():
    pre = PRE.with_resize("crop")
    # 1.5x (DRAFT_MARGIN) what each view needs: shorter side >= 1.5 x resize_size, ...
    assert draft_request((4000, 3000), pre) == (128, 96)
    assert draft_request((4000, 3000), pre.with_resize("full")) == (84, 84)
    assert draft_request((4000, 3000), pre.with_resize("pad")) == (84, 64)
    assert draft_request((4000, 3000), pre.with_resize("pad"), tta=3) == (96, 72)  # corner crops need more
    assert draft_request((40, 30), pre) == (40, 30)  # never asks for more than the image has


@needs_hymenoptera()
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_draft_decoding_of_real_photos_stays_within_the_recorded_tolerance(mode):
    """Every hymenoptera photo: decoded at the draft scale and viewed as featx does, against the
    full-size decode and one exact resample. Decoding right at the view's size, 800x533 bees
    photos differed by 3.2 levels (crop) and letterboxes by up to 5.3 (pad)."""
    pre = Preprocess(256, 224, "bilinear", PRE.mean, PRE.std, mode)
    worst = 0.0
    for path in sorted(HYMENOPTERA.rglob("*.jpg")):
        data = path.read_bytes()
        fast = image_views(decode_image(data, draft_size=lambda size: draft_request(size, pre)), pre)[0]
        reference = _exact_view(decode_image(data), pre)
        worst = max(worst, np.abs(fast.numpy().transpose(1, 2, 0).astype(float) - reference).mean())
    assert worst <= PIXEL_TOLERANCE

"""--decode torch: the batched device resize gives Pillow's pixels (checked here on the CPU)."""

import io

import numpy as np
import pytest
import torch
from conftest import HYMENOPTERA, needs_hymenoptera
from PIL import Image

import featx.preprocess.device as device_views
from featx.extract.extractor import ImageViews
from featx.io.decode import decode_image
from featx.preprocess.config import Preprocess
from featx.preprocess.device import batched_views, decode_on
from featx.preprocess.views import PIXEL_TOLERANCE, image_views

PRE = Preprocess(resize_size=73, crop_size=64, interpolation="bilinear", mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225))
# landscape twice at one size, portrait, another short side, one big enough for reduce(), one upscaled
SIZES = [(200, 150), (200, 150), (150, 200), (210, 140), (900, 640), (40, 30)]


def _photo_like(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    pixels = np.stack([128 + 100 * np.sin(9 * x + 3 * y + seed), 128 + 90 * np.cos(13 * y * x * 4), 255 * (x > y)], -1)
    pixels += rng.normal(0, 6, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def _on_device(blobs: list[bytes]) -> list[torch.Tensor]:
    return decode_on(torch.device("cpu"), [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs])


def _per_image_mean_difference(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return (a.float() - b.float()).abs().mean((1, 2, 3)).numpy()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("mode", ["crop", "full", "pad"])
@pytest.mark.parametrize("tta", [1, 2])
def test_batched_device_views_match_pillow(tmp_path, mode, interpolation, tta):
    pre = Preprocess(PRE.resize_size, PRE.crop_size, interpolation, PRE.mean, PRE.std, mode)
    blobs = [_photo_like(w, h, seed) for seed, (w, h) in enumerate(SIZES)]
    device = batched_views(_on_device(blobs), pre, tta)
    assert device.shape == (len(SIZES) * tta, 3, 64, 64) and device.dtype == torch.uint8
    # against Pillow's own resample of the full-size decode: the same arithmetic, so nearly equal
    exact = torch.cat([image_views(decode_image(b), pre, tta) for b in blobs])
    assert _per_image_mean_difference(device, exact).max() <= 0.5
    # against the Pillow path featx runs (JPEG draft scale, reduce): within the recorded tolerance
    paths = []
    for i, blob in enumerate(blobs):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(blob)
    dataset = ImageViews([str(p) for p in paths], pre, tta, decode="pil")
    pillow = torch.cat([dataset[i]["views"] for i in range(len(paths))])
    assert _per_image_mean_difference(device, pillow).max() <= PIXEL_TOLERANCE


def test_regions_of_one_size_are_resampled_together_and_order_is_kept(monkeypatch):
    blobs = [_photo_like(w, h, seed) for seed, (w, h) in enumerate(SIZES)]
    images = _on_device(blobs)
    alone = torch.cat([batched_views([image], PRE) for image in images])
    calls = []
    original = device_views._resample_group
    monkeypatch.setattr(device_views, "_resample_group",
                        lambda group, plans, how: calls.append(len(group)) or original(group, plans, how))
    together = batched_views(images, PRE)
    # crop keeps a centre square whose side depends on the shorter side only: the two 200x150
    # photos and the 150x200 one share one call; 210x140, the big one and the small one do not
    assert sorted(calls) == [1, 1, 1, 3]
    assert torch.equal(together, alone)  # batching changes no pixel, and each image keeps its place


@needs_hymenoptera()
def test_real_photos_stay_within_the_recorded_tolerance():
    paths = sorted(str(p) for p in HYMENOPTERA.rglob("*.jpg"))[::17]
    pre = PRE.with_image_size(224)
    device = batched_views(_on_device([open(p, "rb").read() for p in paths]), pre)
    dataset = ImageViews(paths, pre, 1, decode="pil")
    pillow = torch.cat([dataset[i]["views"] for i in range(len(paths))])
    assert _per_image_mean_difference(device, pillow).max() <= PIXEL_TOLERANCE

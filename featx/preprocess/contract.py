"""The one image → network input contract.

Every path that feeds the network — local extraction, the head start, Ray actors, `featx serve`,
predict, probe and audit — turns file bytes into views here, so the same photo gives the same
vector everywhere:

- `decode_for_network` (in `featx.preprocess.pil`, torch-free) decodes with Pillow at the JPEG draft
  scale the views allow (`draft_request`), EXIF-rotated, converted to RGB;
- `network_input` makes the (tta, 3, crop, crop) uint8 views of one image, with Pillow or, where the
  store was made with `--decode torch`, with torchvision's decoder and the batched resampler;
- `device_network_inputs` is the batched form of the torch decoder, for many JPEGs at once on a GPU.

Normalisation (mean/std) happens on the device, in `featx.preprocess.views.normalise`."""

from __future__ import annotations

import torch

from featx.io.decode import DecodeError
from featx.options import EXTRACT
from featx.preprocess.config import Preprocess
from featx.preprocess.device import batched_views, decode_on, plain_jpeg
from featx.preprocess.pil import decode_for_network
from featx.preprocess.views import image_views


def network_input(data: bytes, pre: Preprocess, tta: int = EXTRACT.tta, *, decoder: str = "pil",
                  max_pixels: int | None = None) -> torch.Tensor:
    """(tta, 3, crop, crop) uint8 views of one image's bytes; `DecodeError` with featx's code for a
    bad file. `decoder="torch"` decodes plain JPEGs with torchvision (as `--decode torch` stores
    were made); everything else goes through Pillow. `max_pixels`: refuse larger images as
    decompression bombs (default: Pillow's limit)."""
    if decoder == "torch" and plain_jpeg(data, max_pixels=max_pixels):
        blob = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        views = device_network_inputs([blob], pre, tta, torch.device("cpu"))[0]
        if isinstance(views, DecodeError):
            raise views
        return views
    return image_views(decode_for_network(data, pre, tta, max_pixels=max_pixels), pre, tta)


def device_network_inputs(blobs: list[torch.Tensor], pre: Preprocess, tta: int,
                          device: torch.device) -> list[torch.Tensor | DecodeError]:
    """For each JPEG byte tensor, its (tta, 3, crop, crop) uint8 views decoded and resized on
    `device`, or the `DecodeError` that file raised."""
    decoded = decode_on(device, blobs)
    good = [image for image in decoded if not isinstance(image, DecodeError)]
    views = batched_views(good, pre, tta) if good else None
    results, taken = [], 0
    for image in decoded:
        if isinstance(image, DecodeError):
            results.append(image)
        else:
            results.append(views[taken * tta:(taken + 1) * tta])
            taken += 1
    return results

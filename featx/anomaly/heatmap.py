"""Heatmap overlays: the image as the network saw it (the same preprocessing contract as the
features), coloured where the heatmap runs high."""

from __future__ import annotations

import io

import numpy as np

OPACITY = 0.5


def network_view(data: bytes, preprocess, decoder: str = "pil") -> np.ndarray:
    """(size, size, 3) uint8: the one view the network saw of these image bytes."""
    from featx.preprocess.contract import network_input

    return network_input(data, preprocess, 1, decoder=decoder)[0].permute(1, 2, 0).numpy()


def mask_in_view(data: bytes, preprocess) -> np.ndarray:
    """A mask image carried through the same resize and crop as its image: (size, size) bool."""
    return network_view(data, preprocess)[..., 0] > 127


def overlay_rgb(view: np.ndarray, heat: np.ndarray, scale: float, floor: float = 0.0) -> np.ndarray:
    """The view blended with the heatmap in the 'jet' colours, from `floor` (the bottom colour) to
    `scale` (the top one)."""
    from matplotlib import colormaps

    level = np.clip((np.asarray(heat, np.float64) - floor) / max(float(scale) - float(floor), 1e-12), 0, 1)
    colour = colormaps["jet"](level)[..., :3] * 255
    alpha = OPACITY * (0.3 + 0.7 * level)[..., None]  # low scores leave the picture readable
    return np.clip(view * (1 - alpha) + colour * alpha, 0, 255).astype(np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG", optimize=False)
    return buffer.getvalue()


def overlay_png(data: bytes, heat: np.ndarray, record: dict, preprocess, decoder: str = "pil") -> bytes:
    """The overlay of one image, coloured on the scale its model recorded (`heat_floor`, `heat_scale`)."""
    return png_bytes(overlay_rgb(network_view(data, preprocess, decoder), heat, record["heat_scale"],
                                 record.get("heat_floor") or 0.0))

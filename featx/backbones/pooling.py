"""Spatial pooling of activation maps into one vector per image."""

from __future__ import annotations

import torch

from featx.errors import InputError

POOLINGS = ("avg", "max", "avgmax", "gem", "flatten")
FLATTEN_LIMIT = 65_536  # values per image and layer; above it `flatten` is refused
GEM_P = 3.0


def pool(activation: torch.Tensor, how: str, layout: str = "NCHW") -> torch.Tensor:
    """(N, C, H, W) maps -> (N, D); `layout="NHWC"`: channels-last maps (N, H, W, C), pooled over
    H and W all the same; (N, L, C) token sequences are averaged over tokens for every pooling but
    `flatten`; (N, D) vectors pass through."""
    if activation.ndim == 2:
        return activation
    if layout == "NHWC" and activation.ndim == 4:
        activation = activation.permute(0, 3, 1, 2)
    if how == "flatten":
        return activation.flatten(1)
    if activation.ndim == 3:  # transformer tokens (N, L, C)
        return activation.mean(1) if how != "max" else activation.amax(1)
    if activation.ndim != 4:
        return activation.flatten(1)
    if how == "avg":
        return activation.mean((2, 3))
    if how == "max":
        return activation.amax((2, 3))
    if how == "avgmax":
        return torch.cat([activation.mean((2, 3)), activation.amax((2, 3))], 1)
    if how == "gem":  # generalised mean; activations below eps are clamped (it assumes ReLU-like maps)
        return activation.float().clamp(min=1e-6).pow(GEM_P).mean((2, 3)).pow(1.0 / GEM_P)
    raise InputError(f"unknown pooling '{how}'; allowed: {', '.join(POOLINGS)}")


def pooled_dim(shape: tuple[int, ...], how: str, layout: str = "NCHW") -> int:
    """Vector length that `pool` gives for one activation of `shape` (without batch)."""
    if layout == "NHWC" and len(shape) == 3:
        shape = (shape[2], shape[0], shape[1])
    if len(shape) <= 1:
        return int(shape[0]) if shape else 1
    total = 1
    for s in shape:
        total *= int(s)
    if how == "flatten":
        return total
    if len(shape) == 3 and how == "avgmax":
        return 2 * int(shape[0])
    return int(shape[-1]) if len(shape) == 2 else int(shape[0])


def check_pool_name(how: str) -> str:
    if how not in POOLINGS:
        raise InputError(f"unknown pooling '{how}'; allowed: {', '.join(POOLINGS)}")
    return how


def check_pool_with_tta(how: str, tta: int) -> None:
    """Flattened maps keep positions, and TTA's flipped and shifted views move them: their mean
    would mix unrelated positions, so the two are refused together."""
    if how == "flatten" and int(tta) > 1:
        raise InputError(f"--pool flatten cannot be combined with --tta {tta}: the views are flipped and shifted, "
                         "so averaging flattened maps mixes different positions; use --tta 1 with flatten, "
                         "or --pool avg|max|avgmax|gem with TTA")


def check_pooling(how: str, layer: str, shape: tuple[int, ...]) -> None:
    check_pool_name(how)
    if how == "flatten" and pooled_dim(shape, how) > FLATTEN_LIMIT:
        raise InputError(f"--pool flatten on layer '{layer}' of shape {tuple(shape)} gives "
                         f"{pooled_dim(shape, how):,} values per image, above the limit of {FLATTEN_LIMIT:,}; "
                         "use --pool avg|max|avgmax|gem, a smaller --image-size, or a later layer")

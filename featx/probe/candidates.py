"""What a probe tries: which backbones can run offline, which layers (`--layers auto`: a handful of
stage outputs spread over depth, chosen from the layer lister's shapes), and what each layer
costs to compute."""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np
import torch
from torch import nn

from featx.errors import InputError

log = logging.getLogger(__name__)

AUTO_LAYERS = 6


def stage_outputs(rows: list[dict]) -> list[str]:
    """The outputs of the network's stages, from `describe_layers` rows (graph order).

    A stage's output is the last node with its (channels, height, width) shape. Inverted-residual
    networks also have wide expansion maps that appear once per block; they are dropped by keeping
    only shapes whose channel count is not above any later candidate's (the stage outputs of a CNN
    widen with depth, expansions are wider than the next stage's output). Pooled 1×1 maps and the
    classifier head are left out: they are the penultimate vector again, or ImageNet's classes."""
    default = next((i for i, r in enumerate(rows) if r["default"]), len(rows) - 1)
    spatial = [(i, r) for i, r in enumerate(rows[:default + 1])  # the head's maps are ImageNet classes
               if len(r["shape"]) == 3 and r["shape"][1] * r["shape"][2] > 1]
    last_of_shape: dict[tuple, tuple[int, str]] = {}
    for i, row in spatial:
        last_of_shape[tuple(row["shape"])] = (i, row["layer"])
    ordered = sorted((i, name, shape[0]) for shape, (i, name) in last_of_shape.items())
    kept, floor = [], np.inf
    for i, name, channels in reversed(ordered):
        if channels <= floor:
            kept.append((i, name))
            floor = channels
    return [name for _, name in sorted(kept)]


def auto_layers(rows: list[dict], n: int = AUTO_LAYERS) -> list[str]:
    """~n stage outputs spread evenly over depth, always including the deepest one; the stem's
    first stage is skipped when there are more than n (its few channels rarely carry classes)."""
    stages = stage_outputs(rows)
    if not stages:  # no spatial maps (e.g. a transformer's tokens): the default layer
        return [next(r["layer"] for r in rows if r["default"])]
    if len(stages) > n:
        stages = stages[1:]
    if len(stages) <= n:
        return stages
    picks = np.unique(np.linspace(0, len(stages) - 1, n).round().astype(int))
    return [stages[i] for i in picks]


def parse_layers(layers: str | Sequence[str] | None, rows: list[dict], model: str) -> list[str]:
    """`auto` (or None) → auto_layers; else the given names, checked against the lister."""
    if layers is None or layers == "auto" or list(layers) == ["auto"]:
        return auto_layers(rows)
    names = [name.strip() for name in (layers.split(",") if isinstance(layers, str) else layers) if name.strip()]
    if not names:
        raise InputError("--layers is empty; give 'auto' or comma-separated layer names "
                         f"(run `featx layers {model}` to list them)")
    return names


def layer_depths(layers: Sequence[str], node_order: Sequence[str]) -> dict[str, float]:
    """Relative depth 0…1 of each layer in graph order (a container name: its last node)."""
    position = {name: i for i, name in enumerate(node_order)}
    last = max(1, len(node_order) - 1)
    depths = {}
    for layer in layers:
        at = position.get(layer)
        if at is None:
            inside = [position[n] for n in node_order if n.startswith(layer + ".")]
            at = max(inside) if inside else last
        depths[layer] = at / last
    return depths


def _module_of(node: str, modules: dict[str, nn.Module]) -> str | None:
    """The innermost module that computes a graph node (a node such as 'blocks.1.1.add' lies in
    module 'blocks.1.1')."""
    name = node
    while name:
        if name in modules:
            return name
        name = name.rsplit(".", 1)[0] if "." in name else ""
    return None


@torch.inference_mode()
def forward_speed(model: nn.Module, layers: Sequence[str], image_size: int, device: torch.device,
                  batch: int = 16, repeats: int = 2) -> dict[str, float]:
    """Images per second of the forward pass up to each layer (later layers are not needed to
    get an earlier one), timed with forward hooks on one full pass of a synthetic batch."""
    modules = dict(model.named_modules())
    owner = {layer: _module_of(layer, modules) for layer in layers}
    stamps: dict[str, float] = {}

    def hook(name):
        def record(*_):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            stamps[name] = time.perf_counter()

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in set(filter(None, owner.values()))]
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    elapsed: dict[str, list[float]] = {layer: [] for layer in layers}
    try:
        model(x)  # warm-up
        for _ in range(repeats):
            stamps.clear()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            end = time.perf_counter()
            for layer in layers:
                elapsed[layer].append(stamps.get(owner[layer], end) - start if owner[layer] else end - start)
    finally:
        for handle in handles:
            handle.remove()
    return {layer: float(batch / max(min(times), 1e-9)) for layer, times in elapsed.items()}

"""How far the user's images are from what a backbone was trained on, measured two ways:

- per probed layer, the distance between the per-channel statistics of the user's activations
  entering the next BatchNorm layer and that layer's running statistics (what the network saw in
  training): the 2-Wasserstein distance between the two per-channel Gaussians, in the BN layer's
  own normalised units (0 = the training distribution; 1 = off by one training standard deviation),
  averaged over channels;
- the ImageNet head's mean max-probability: a confident head means familiar-looking images.

One forward pass of the whole network over a sample of the images gives both."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from featx.options import PROBE
from featx.preprocess.views import normalise

log = logging.getLogger(__name__)

IMAGENET_CLASSES = 1000
# thresholds on the mean over probed layers of the BN distance; calibrated on hymenoptera (near),
# Fashion-MNIST (far) and uniform noise (farthest) with the bundled EfficientNet-Lite0
# (48 images each: 0.24, 0.53 and 0.80; ImageNet head mean max-probability 0.68, 0.22 and 0.14)
NEAR_BELOW = 0.35
FAR_ABOVE = 0.45


class _ChannelMoments:
    """Running per-channel sum and sum of squares of a BatchNorm layer's input (float64)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        self.bn = bn
        self.count = 0
        self.total = torch.zeros(bn.num_features, dtype=torch.float64)
        self.squares = torch.zeros(bn.num_features, dtype=torch.float64)

    def __call__(self, _module, inputs) -> None:
        x = inputs[0].detach().double()
        dims = [d for d in range(x.ndim) if d != 1]
        self.count += x.numel() // x.shape[1]
        self.total += x.sum(dims).cpu()
        self.squares += (x * x).sum(dims).cpu()

    def distance(self) -> float:
        mean = self.total / max(self.count, 1)
        var = (self.squares / max(self.count, 1) - mean * mean).clamp(min=0)
        running_mean = self.bn.running_mean.detach().double().cpu()
        running_var = self.bn.running_var.detach().double().cpu()
        w2 = ((mean - running_mean) ** 2 + (var.sqrt() - running_var.sqrt()) ** 2) / (running_var + self.bn.eps)
        return float(w2.sqrt().mean())


@dataclass
class ShiftReport:
    per_layer: dict[str, dict]  # layer -> {"bn_layer": name, "bn_distance": float}
    head_max_probability: float | None
    images: int
    meaningful: bool  # False for random weights: their running statistics describe no training data
    level: str  # near | moderate | far | unknown
    advice: str

    def to_dict(self) -> dict:
        return {"per_layer": self.per_layer, "head_max_probability": self.head_max_probability,
                "images": self.images, "meaningful": self.meaningful, "level": self.level, "advice": self.advice}


def batchnorm_after(layers: Sequence[str], node_order: Sequence[str], model: nn.Module) -> dict[str, str | None]:
    """For each layer, the first BatchNorm node at or after it in graph order (its input is the
    layer's output or close to it); the last BatchNorm for layers after every BatchNorm."""
    modules = dict(model.named_modules())
    position = {name: i for i, name in enumerate(node_order)}
    norms = [(position[name], name) for name, module in modules.items()
             if name in position and isinstance(module, nn.modules.batchnorm._BatchNorm)
             and module.track_running_stats and module.running_mean is not None]
    norms.sort()
    chosen = {}
    for layer in layers:
        at = position.get(layer)
        if at is None:  # a container name: its last node
            inside = [position[n] for n in node_order if n.startswith(layer + ".")]
            at = max(inside) if inside else None
        after = [name for i, name in norms if at is not None and i >= at]
        chosen[layer] = after[0] if after else (norms[-1][1] if norms else None)
    return chosen


@torch.inference_mode()
def measure_domain_shift(backbone, dataset, layers: Sequence[str], node_order: Sequence[str], *,
                         meaningful: bool, batch_size: int = PROBE.batch_size,
                         device: torch.device | None = None) -> ShiftReport:
    """`dataset` yields featx's reader items (featx.extract.ImageViews, one view each)."""
    from featx.extract.extractor import collate

    device = device or torch.device("cpu")
    model = backbone.model.eval().to(device)
    bn_of = batchnorm_after(layers, node_order, model)
    modules = dict(model.named_modules())
    moments = {name: _ChannelMoments(modules[name]) for name in set(bn_of.values()) if name}
    handles = [modules[name].register_forward_pre_hook(m) for name, m in moments.items()]
    probabilities, images = [], 0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=0)
        for batch in loader:
            if batch["views"] is None:
                continue
            x = normalise(batch["views"].to(device), backbone.preprocess)
            out = model(x)
            images += len(x)
            if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] == IMAGENET_CLASSES:
                probabilities.append(out.float().softmax(1).amax(1).cpu().numpy())
    finally:
        for handle in handles:
            handle.remove()
    per_layer = {layer: {"bn_layer": bn, "bn_distance": moments[bn].distance() if bn and images else None}
                 for layer, bn in bn_of.items()}
    head = float(np.concatenate(probabilities).mean()) if probabilities else None
    level, advice = advise(per_layer, head, meaningful, layers)
    return ShiftReport(per_layer, head, images, meaningful, level, advice)


def mean_distance(per_layer: dict[str, dict]) -> float | None:
    values = [v["bn_distance"] for v in per_layer.values() if v["bn_distance"] is not None]
    return float(np.mean(values)) if values else None


def advise(per_layer: dict[str, dict], head: float | None, meaningful: bool, layers: Sequence[str]) -> tuple[str, str]:
    """One sentence on what the measured distance suggests."""
    distance = mean_distance(per_layer)
    if not meaningful:
        return "unknown", ("The backbone has random weights, so there is no training distribution to compare with; "
                           "the domain-shift numbers are not meaningful.")
    if distance is None:
        return "unknown", "The backbone has no BatchNorm layers to compare with; the domain shift was not measured."
    head_text = f", ImageNet head mean max-probability {head:.2f}" if head is not None else ""
    measured = f"(mean BN distance {distance:.2f}{head_text})"
    if distance < NEAR_BELOW:
        return "near", (f"Your images look like the backbone's training data {measured}: "
                        "the deep layers and the default penultimate features should transfer well.")
    if distance <= FAR_ABOVE:
        return "moderate", (f"Your images are moderately far from the backbone's training data {measured}: "
                            "compare mid-level layers with the last one; the probe's ranking tells which wins.")
    return "far", (f"Your images are far from the backbone's training data {measured}: prefer earlier or "
                   "mid-level layers, GeM/avgmax pooling or a smaller network, and trust the measured ranking "
                   "over the default layer.")

"""Layer addressing: every requested layer comes out of ONE forward pass.

Layers are FX graph nodes (torchvision `create_feature_extractor`, timm's variant for timm models)
where the model traces, and module names read with forward hooks where it does not."""

from __future__ import annotations

import difflib
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from featx.errors import UnknownNameError

log = logging.getLogger(__name__)

# modules and functions that pass a vector through unchanged at inference
_PASS_THROUGH_MODULES = (nn.Dropout, nn.Identity)
_PASS_THROUGH_FUNCTIONS = ("dropout",)


@dataclass(frozen=True)
class Addressable:
    """The layers of a model: torch.fx graph nodes when it traces, else module names (hooks)."""

    names: list[str]
    traced: bool


def addressable_layers(model: nn.Module) -> Addressable:
    """One symbolic trace of the model (the costly part), shared by everything that names layers."""
    try:
        if _is_timm(model):
            from timm.models._features_fx import get_graph_node_names
        else:
            from torchvision.models.feature_extraction import get_graph_node_names
        _, eval_nodes = get_graph_node_names(model)
        return Addressable([n for n in eval_nodes if n != "x"], traced=True)
    except Exception as exc:  # models with data-dependent control flow do not trace
        log.info("model does not trace with torch.fx (%s); using forward hooks", exc)
        return Addressable([name for name, _ in model.named_modules() if name], traced=False)


class LayerTap(nn.Module):
    """Runs the model once and returns {layer: activation} for the requested layers."""

    def __init__(self, model: nn.Module, layers: Sequence[str], model_name: str,
                 addressable: Addressable | None = None):
        super().__init__()
        self.layers = list(layers)
        self.traced = None
        self.model = model
        addressable = addressable or addressable_layers(model)
        targets = {layer: resolve_layer(layer, addressable.names, model, model_name) for layer in self.layers}
        if addressable.traced:
            self.traced = _feature_extractor_fn(model)(model, return_nodes={node: layer for layer, node in targets.items()})
        else:
            # per-thread capture: concurrent forward passes (the service) never see each other's activations
            self._local = threading.local()
            modules = dict(model.named_modules())
            for layer in self.layers:
                modules[layer].register_forward_hook(self._hook(layer))

    def _hook(self, layer):
        def capture(_module, _inputs, output):
            self._local.captured[layer] = output

        return capture

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.traced is not None:
            return self.traced(x)
        self._local.captured = captured = {}
        try:
            self.model(x)
        finally:
            self._local.captured = None
        return {layer: captured[layer] for layer in self.layers}


def _is_timm(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _feature_extractor_fn(model: nn.Module):
    if _is_timm(model):
        from timm.models import create_feature_extractor
    else:
        from torchvision.models.feature_extraction import create_feature_extractor
    return create_feature_extractor


def resolve_layer(layer: str, available: Sequence[str], model: nn.Module, model_name: str) -> str:
    """A graph node by name, or a container module (e.g. 'blocks.5'), which means its last node."""
    if layer in available:
        return layer
    if layer in dict(model.named_modules()):
        inside = [n for n in available if n.startswith(layer + ".")]
        if inside:
            return inside[-1]
    raise unknown_layer_error(layer, available, model_name)


def unknown_layer_error(layer: str, available: Sequence[str], model_name: str) -> UnknownNameError:
    close = difflib.get_close_matches(layer, available, n=5, cutoff=0.4)
    hint = f" Closest: {', '.join(close)}." if close else ""
    return UnknownNameError(f"unknown layer '{layer}' for model '{model_name}'.{hint} "
                            f"Run `featx layers {model_name}` to list its layers")


def default_layer(model: nn.Module, addressable: Addressable | None = None) -> str:
    """The pooled penultimate features: the input of the final linear classifier, walking back
    over dropout and identity. Models whose classifier is a convolution (SqueezeNet) use the last
    node before the classifier block."""
    names = (addressable or addressable_layers(model)).names
    modules = dict(model.named_modules())

    def passes_through(name: str) -> bool:
        module = modules.get(name)
        return isinstance(module, _PASS_THROUGH_MODULES) or (
            module is None and name.rsplit(".", 1)[-1].split("_")[0] in _PASS_THROUGH_FUNCTIONS)

    linear = [i for i, name in enumerate(names) if isinstance(modules.get(name), nn.Linear)]
    if linear:
        i = linear[-1] - 1
        while i > 0 and passes_through(names[i]):
            i -= 1
        return names[i]
    head = next((i for i, n in enumerate(names) if n.startswith(("classifier", "fc", "head"))), None)
    return names[head - 1] if head else names[-1]


@torch.inference_mode()
def layer_shapes(model: nn.Module, model_name: str, image_size: int,
                 addressable: Addressable | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every addressable layer, from one dummy forward pass."""
    addressable = addressable or addressable_layers(model)
    x = torch.zeros(1, 3, image_size, image_size)
    tap = LayerTap(model, addressable.names, model_name, addressable)
    outputs = tap(x)
    return {name: tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else () for name, out in outputs.items()}

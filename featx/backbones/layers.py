"""Layer addressing: every requested layer comes out of ONE forward pass.

Layers are FX graph nodes (torchvision `create_feature_extractor`, timm's variant for timm models)
where the model traces, and module names read with forward hooks where it does not."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from featx.errors import UnknownNameError
from featx.io.cache import recall, remember
from featx.options import EXTRACT, LAYERS

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
    """Runs the model once and returns {layer: activation} for the requested layers.

    A traced model runs as a lean copy of its graph (pruned after the last tapped layer, conv+BN
    folded, see `featx.backbones.lean_graph`), kept only if its outputs on a seeded probe image equal the
    plain graph's within `FOLD_TOLERANCE`; `lean=False` keeps the plain graph. `identity` names
    the weights (id and sha256): given, the verdict of that check is remembered on disk and a later
    build of the same graph with the same weights skips the probe passes. `probe_shapes` is each
    layer's output shape (without batch) for one `image_size` input, when a probe or the remembered
    check gave it (None otherwise)."""

    def __init__(self, model: nn.Module, layers: Sequence[str], model_name: str,
                 addressable: Addressable | None = None, *, lean: bool = True, image_size: int = 224,
                 identity: str | None = None):
        super().__init__()
        self.layers = list(layers)
        self.traced = None
        self.folded = 0
        self.probe_shapes: dict[str, tuple[int, ...]] | None = None
        addressable = addressable or addressable_layers(model)
        targets = {layer: resolve_layer(layer, addressable.names, model, model_name) for layer in self.layers}
        if not self.layers:  # nothing to tap (the stored pixels alone): the network never runs
            self.model = model
        elif addressable.traced:
            traced = _feature_extractor_fn(model)(model, return_nodes={node: layer for layer, node in targets.items()})
            if lean:
                self.traced, self.folded, self.probe_shapes = _leaner(traced.eval(), model_name, image_size, identity)
            else:
                self.traced = traced
        else:
            self.model = model
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
        if not self.layers:
            return {}
        if self.traced is not None:
            return self.traced(x)
        self._local.captured = captured = {}
        try:
            self.model(x)
        finally:
            self._local.captured = None
        return {layer: captured[layer] for layer in self.layers}


def _leaner(traced: nn.Module, model_name: str, image_size: int,
            identity: str | None) -> tuple[nn.Module, int, dict[str, tuple[int, ...]] | None]:
    """The lean copy of `traced` if it gives the same features, else `traced` itself; with the
    folds made and the probe's output shapes."""
    from featx.backbones import lean_graph

    key = (lean_graph.check_key(traced, {"model": model_name, "weights": identity, "image_size": image_size})
           if identity is not None else None)
    check = lean_graph.remembered_check(key) if key else None
    try:
        lean, folded = lean_graph.lean_copy(traced)
    except Exception as exc:  # an unusual graph: the plain one still works
        log.info("no lean graph for %s (%s); using the plain one", model_name, exc)
        return traced, 0, None
    if check is None:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(1, 3, image_size, image_size, generator=generator)
        with torch.inference_mode():
            plain_out, lean_out = traced(probe), lean(probe)
        check = {"difference": lean_graph.max_relative_difference(plain_out, lean_out), "folded": folded,
                 "shapes": {k: list(v.shape[1:]) for k, v in plain_out.items() if isinstance(v, torch.Tensor)}}
        if key:
            lean_graph.remember_check(key, check)
    else:
        log.debug("%s: lean graph check remembered from an earlier run", model_name)
    shapes = {k: tuple(v) for k, v in check["shapes"].items()}
    if check["difference"] > lean_graph.FOLD_TOLERANCE:
        log.warning("folding BatchNorm changes %s's features by %.2g (> %g); using the unfolded graph",
                    model_name, check["difference"], lean_graph.FOLD_TOLERANCE)
        return traced, 0, shapes
    log.debug("%s: %d BatchNorm layers folded (max relative difference %.2g)", model_name, folded, check["difference"])
    return lean, folded, shapes


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


FINAL = "final"  # `--layer final`: the default layer alone
STAGE_ENDS = 4  # stage ends stored next to the final layer by default
SHAPE_PROBE_SIZE = 224  # the stage ends are found on a probe input of at most this size
DEFAULT_LAYERS_FILE = "default-layers.json"


def stage_ends(shapes: dict[str, tuple[int, ...]], final: str, count: int = STAGE_ENDS) -> list[str]:
    """The output of the last block at each resolution of a convolutional network, over the `count`
    deepest resolutions below the stem (strides 4, 8, 16, 32 of a usual CNN): features from several
    depths, where middle layers often carry more than the last one on data far from ImageNet.

    A block that changes the resolution may start (its expansion) before it: the nodes of that block
    (named like the first node at the next resolution) are not this resolution's end. At the deepest
    resolution the trailing layers as wide as `final` (the head's convolution before the global
    pool) are skipped, as the final layer holds them. Networks without maps (transformers'
    tokens) have no stage ends."""
    names = list(shapes)
    before_final = names[:names.index(final)] if final in names else names
    # maps only: 1×1 "maps" are pooled vectors
    maps = [name for name in before_final if len(shapes[name]) == 3 and _map_side(shapes[name]) > 1]
    if not maps:
        return []
    final_shape = shapes.get(final, ())
    final_width = _map_channels(final_shape) if len(final_shape) == 3 else int(np.prod(final_shape or (0,)))
    groups: list[list[str]] = []  # consecutive nodes at one resolution
    for name in maps:
        if groups and _map_side(shapes[groups[-1][-1]]) == _map_side(shapes[name]):
            groups[-1].append(name)
        else:
            groups.append([name])
    ends = []
    for at, following in zip(groups, groups[1:] + [None]):
        if following is None:
            kept = [n for n in at if _map_channels(shapes[n]) != final_width]
        else:
            block = following[0].rsplit(".", 1)[0]
            next_block = (block if "." in block else following[0]) + "."  # never the whole network's body
            kept = [n for n in at if not n.startswith(next_block)]
        if kept:
            ends.append(kept[-1])
    return ends[1:][-count:]  # the stem's resolution is too shallow


def _map_side(shape: tuple[int, ...]) -> int:
    return shape[2] if output_format(shape) == "NCHW" else shape[1]


def _map_channels(shape: tuple[int, ...]) -> int:
    return shape[0] if output_format(shape) == "NCHW" else shape[2]


def default_layers(model: nn.Module, model_name: str, image_size: int, addressable: Addressable | None = None,
                   *, pool: str = EXTRACT.pool) -> list[str]:
    """What `featx extract` stores by default: the final layer first (every step's default), then
    the stage ends (`stage_ends`). `--pool flatten` keeps the final layer alone (flattened maps
    are far too wide)."""
    addressable = addressable or addressable_layers(model)
    final = default_layer(model, addressable)
    if pool == "flatten":
        return [final]
    size = min(image_size, SHAPE_PROBE_SIZE)
    # the answer depends on the architecture only: remembered on disk, a later run skips the shape pass
    key = hashlib.sha256(json.dumps([model_name, size, addressable.names, torch.__version__]).encode()).hexdigest()
    known = recall(DEFAULT_LAYERS_FILE, key)
    if known is None:
        known = [final, *stage_ends(layer_shapes(model, model_name, size, addressable), final)]
        remember(DEFAULT_LAYERS_FILE, key, known, kept=64)
    return list(known)


@torch.inference_mode()
def layer_shapes(model: nn.Module, model_name: str, image_size: int,
                 addressable: Addressable | None = None) -> dict[str, tuple[int, ...]]:
    """Output shape (without batch) of every addressable layer, from one dummy forward pass."""
    addressable = addressable or addressable_layers(model)
    x = torch.zeros(1, 3, image_size, image_size)
    tap = LayerTap(model, addressable.names, model_name, addressable, lean=False)
    outputs = tap(x)
    return {name: tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else () for name, out in outputs.items()}


# --- output formats ------------------------------------------------------------------------------

FORMATS = ("NCHW", "NHWC", "NLC", "NC")  # channels-first maps, channels-last maps, tokens, vectors


def output_format(shape: tuple[int, ...], shape_at_other_size: tuple[int, ...] | None = None) -> str:
    """The layout of one activation (`shape` without batch) from a square input: in a map the two
    spatial sides are equal, so (C, S, S) is channels-first and (S, S, C) channels-last (timm's
    ConvNeXt and Swin emit NHWC inside their blocks). When all three sides are equal the shape from
    a second input size decides: the side that did not change is the channels."""
    if len(shape) <= 1:
        return "NC"
    if len(shape) == 2:
        return "NLC"
    if len(shape) != 3:
        return "NCHW"
    a, b, c = shape
    if b == c and a != b:
        return "NCHW"
    if a == b and b != c:
        return "NHWC"
    if shape_at_other_size is not None and len(shape_at_other_size) == 3:
        if shape_at_other_size[0] == a and shape_at_other_size[2] != c:
            return "NCHW"
        if shape_at_other_size[2] == c and shape_at_other_size[0] != a:
            return "NHWC"
    return "NCHW"


@torch.inference_mode()
def output_formats(tap: LayerTap, outputs: dict[str, torch.Tensor], size: int) -> dict[str, str]:
    """The layout of each tapped layer, given its outputs for a (1, 3, size, size) input; a second,
    larger input is run only when a shape cannot tell (C == H == W)."""
    shapes = {layer: tuple(out.shape[1:]) for layer, out in outputs.items()}
    unclear = [name for name, s in shapes.items() if len(s) == 3 and s[0] == s[1] == s[2]]
    other: dict[str, tuple[int, ...]] = {}
    if unclear:
        try:
            other = {name: tuple(o.shape[1:]) for name, o in tap(torch.zeros(1, 3, size + 32, size + 32)).items()}
        except Exception as exc:  # models with a fixed input size: assume channels-first, and say so
            log.warning("cannot tell the layout of %s (shape %s); assuming channels-first (%s)",
                        ", ".join(unclear), shapes[unclear[0]], exc)
    return {layer: output_format(shape, other.get(layer)) for layer, shape in shapes.items()}


def describe_layers(model: str, image_size: int | None = LAYERS.image_size, weights: str = "random") -> list[dict]:
    """Every addressable layer of `model` with its output shape at the model's input size.
    Shapes do not depend on the weights, so random ones are used: this works offline."""
    from featx.backbones import load_backbone

    backbone = load_backbone(model, weights, image_size)
    addressable = addressable_layers(backbone.model)
    shapes = layer_shapes(backbone.model, model, backbone.preprocess.crop_size, addressable)
    default = default_layer(backbone.model, addressable)
    return [{"layer": name, "shape": list(shape), "default": name == default} for name, shape in shapes.items()]

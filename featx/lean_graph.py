"""Inference-time simplification of a tapped torch.fx graph: BatchNorm folded into the convolution
before it, pass-through modules (Identity, Dropout) dropped. A BatchNorm is a full memory pass over
every activation; folding it removes ~25% of a MobileNet's CPU time and changes the features only
by float rounding. The graph is already pruned after the last tapped node (torchvision/timm
`create_feature_extractor` eliminates dead code); `lean_copy` works on a copy, so the backbone the
caller holds is never changed."""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

log = logging.getLogger(__name__)

FOLD_TOLERANCE = 1e-4  # largest allowed |lean - original| relative to the layer's largest |activation|
_PASS_THROUGH = (nn.Identity, nn.Dropout)


def lean_copy(graph_module: fx.GraphModule) -> tuple[fx.GraphModule, int]:
    """A copy of `graph_module` (in eval mode) with conv+BN folded; returns it and the folds made."""
    lean = copy.deepcopy(graph_module).eval()
    modules = dict(lean.named_modules())
    folded = 0
    for node in list(lean.graph.nodes):
        if node.op != "call_module":
            continue
        module = modules[node.target]
        if isinstance(module, _PASS_THROUGH) and len(node.args) == 1 and not node.kwargs:
            node.replace_all_uses_with(node.args[0])
            lean.graph.erase_node(node)
        elif isinstance(module, nn.BatchNorm2d) and _foldable(node, module, modules):
            conv_node = node.args[0]
            conv = modules[conv_node.target]
            conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, module.running_mean,
                                                          module.running_var, module.eps, module.weight, module.bias)
            after = _after_norm(module)
            if after is None:
                node.replace_all_uses_with(conv_node)
                lean.graph.erase_node(node)
            else:  # timm's BatchNormAct2d: keep its activation (and dropout) in the BN's place
                _set_module(lean, node.target, after)
            folded += 1
        elif any(True for _ in module.children()):  # a container traced as one leaf (Conv2dNormActivation)
            folded += _fold_inside(module)
    lean.graph.lint()
    lean.delete_all_unused_submodules()
    lean.recompile()
    return lean, folded


def _fold_inside(container: nn.Module) -> int:
    """Fold every (Conv2d, BatchNorm) pair of consecutive children in the Sequentials of a module the
    graph calls as a whole: nothing outside sees the conv's own output."""
    folded = 0
    for sequential in [m for m in container.modules() if isinstance(m, nn.Sequential)]:
        names = list(sequential._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = sequential._modules[first], sequential._modules[second]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and type(bn).forward in _KNOWN_NORMS
                    and not bn.training and bn.running_mean is not None and conv.out_channels == bn.num_features):
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                              bn.eps, bn.weight, bn.bias)
                sequential._modules[second] = _after_norm(bn) or nn.Identity()
                folded += 1
    return folded


def _foldable(node: fx.Node, bn: nn.BatchNorm2d, modules: dict[str, nn.Module]) -> bool:
    """A BN in eval with running statistics, whose only input is a conv read by nothing else (a conv
    that is itself tapped, or feeds a residual branch, keeps its own output)."""
    if bn.training or not bn.track_running_stats or bn.running_mean is None or len(node.args) != 1 or node.kwargs:
        return False
    source = node.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return False
    conv = modules[source.target]
    return isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features and type(bn).forward in _KNOWN_NORMS


def _after_norm(bn: nn.Module) -> nn.Module | None:
    """What a fused norm+activation module does after normalising; None for a plain BatchNorm."""
    if type(bn).forward is nn.BatchNorm2d.forward:
        return None
    return nn.Sequential(bn.drop, bn.act)


def _known_norms() -> set:
    norms = {nn.BatchNorm2d.forward}
    try:  # timm's BatchNormAct2d = batch norm, then dropout, then activation
        from timm.layers import BatchNormAct2d

        norms.add(BatchNormAct2d.forward)
    except Exception:
        pass
    return norms


_KNOWN_NORMS = _known_norms()


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


@torch.inference_mode()
def max_relative_difference(a: dict, b: dict) -> float:
    """The largest |a - b| over all outputs, each relative to its output's largest |value|."""
    worst = 0.0
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            scale = float(value.abs().max()) or 1.0
            worst = max(worst, float((value - b[key]).abs().max()) / scale)
    return worst

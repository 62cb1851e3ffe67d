import pytest
import torch
from torch import nn

from featx.backbones import load_backbone
from featx.backbones.layers import LayerTap, addressable_layers
from featx.backbones.lean_graph import FOLD_TOLERANCE, max_relative_difference


def _model_with_real_statistics(name: str) -> nn.Module:
    """Random weights leave BatchNorm an identity (mean 0, var 1), which folding cannot get wrong:
    give every BN seeded statistics and affine parameters so the fold has something to fold."""
    model = load_backbone(name, "random").model
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
            module.weight.data.copy_(torch.randn(n, generator=generator) * 0.5 + 1)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.3)
    return model.eval()


@pytest.mark.parametrize("name,layers", [
    ("resnet18", ["layer1.0.conv1", "layer2", "layer3.1.relu_1", "flatten"]),  # BN nodes in the graph
    ("mobilenet_v3_small", ["features.3", "features.9", "classifier.1"]),  # conv+BN inside one traced leaf
    ("efficientnet_lite0", ["blocks.2", "blocks.5", "global_pool.flatten"]),  # timm BatchNormAct2d
])
def test_lean_graph_gives_the_unpruned_features(name, layers):
    model = _model_with_real_statistics(name)
    addressable = addressable_layers(model)
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        native_logits = model(x)
        plain = LayerTap(model, layers, name, addressable, lean=False)(x)
        for subset in ([layers[-1]], layers):  # the default single layer, and several at once
            tap = LayerTap(model, subset, name, addressable, image_size=64)
            assert tap.folded > 0  # the lean graph is in use, not the plain fallback
            lean = tap(x)
            assert set(lean) == set(subset)
            assert max_relative_difference({k: plain[k] for k in subset}, lean) <= FOLD_TOLERANCE
            assert all(not torch.equal(plain[k], torch.zeros_like(plain[k])) for k in subset)
        # the backbone the caller holds is untouched: its BatchNorms are still there and work
        assert torch.equal(model(x), native_logits)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0


def test_a_tapped_convolution_keeps_its_own_output():
    model = _model_with_real_statistics("resnet18")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        plain = LayerTap(model, ["conv1", "bn1"], "resnet18", lean=False)(x)
        lean = LayerTap(model, ["conv1", "bn1"], "resnet18", image_size=64)(x)
    # folding bn1 into conv1 would make 'conv1' return the normalised values
    assert max_relative_difference(plain, lean) <= FOLD_TOLERANCE
    assert not torch.allclose(plain["conv1"], plain["bn1"])

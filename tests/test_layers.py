import pytest
import torch

from featx.api import describe_layers
from featx.backbones import load_backbone
from featx.errors import InputError, UnknownNameError
from featx.layers import LayerTap
from featx.pooling import check_pooling, pool


@pytest.mark.parametrize("model,layer,dim", [
    ("resnet18", "flatten", 512), ("mobilenet_v2", "flatten", 1280), ("squeezenet1_1", "features.12.cat", 512),
    ("efficientnet_lite0", "global_pool.flatten", 1280), ("timm:resnet18", "global_pool.flatten", 512),
])
def test_default_layer_is_pooled_penultimate(model, layer, dim):
    rows = describe_layers(model)
    default = [r for r in rows if r["default"]]
    assert [r["layer"] for r in default] == [layer]
    assert default[0]["shape"][0] == dim


def test_several_layers_come_from_one_forward_pass():
    model = load_backbone("resnet18", "random").model
    calls = []
    model.conv1.register_forward_hook(lambda *a: calls.append(1))
    tap = LayerTap(model, ["layer2", "layer4.1.relu_1", "flatten"], "resnet18")  # layer2: a container module
    out = tap(torch.zeros(2, 3, 64, 64))
    assert set(out) == {"layer2", "layer4.1.relu_1", "flatten"}
    assert out["layer2"].shape == (2, 128, 8, 8) and out["flatten"].shape == (2, 512)


def test_unknown_layer_lists_close_names_and_the_lister():
    model = load_backbone("resnet18", "random").model
    with pytest.raises(UnknownNameError, match=r"unknown layer 'layer4.1.relu_9'.*layer4.1.relu.*featx layers resnet18"):
        LayerTap(model, ["layer4.1.relu_9"], "resnet18")


def test_pooling_shapes_and_invariants():
    x = torch.rand(2, 4, 3, 3)
    assert pool(x, "avg").shape == (2, 4) and torch.allclose(pool(x, "avg"), x.mean((2, 3)))
    assert pool(x, "avgmax").shape == (2, 8) and pool(x, "flatten").shape == (2, 36)
    assert torch.all(pool(x, "max") >= pool(x, "gem") - 1e-6) and torch.all(pool(x, "gem") >= pool(x, "avg") - 1e-6)
    assert pool(torch.rand(2, 5, 7), "avg").shape == (2, 7)  # transformer tokens


def test_flatten_refuses_huge_vectors():
    with pytest.raises(InputError, match=r"--pool flatten on layer 'layer1'.*above the limit"):
        check_pooling("flatten", "layer1", (64, 56, 56))
    with pytest.raises(InputError, match="allowed: avg, max"):
        check_pooling("median", "x", (4,))

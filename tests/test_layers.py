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


def test_hooked_capture_is_per_call_when_forward_passes_overlap():
    """The service runs forward passes from several threads; a pass paused half-way must still
    return its own activations, not those of a pass that ran meanwhile (it did before: one dict)."""
    import threading

    import torch
    from torch import nn

    from featx.layers import Addressable, LayerTap

    entered, release = threading.Event(), threading.Event()

    class Gate(nn.Module):
        def forward(self, x):
            if x.mean() > 5:  # the marked input waits here, between the two captured layers
                entered.set()
                release.wait(10)
            return x

    model = nn.Sequential(nn.Identity(), Gate(), nn.Identity())
    tap = LayerTap(model, ["0", "2"], "toy", Addressable(["0", "1", "2"], traced=False))
    slow_input, fast_input = torch.full((1, 3), 10.0), torch.zeros(1, 3)
    result = {}
    worker = threading.Thread(target=lambda: result.update(slow=tap(slow_input)))
    worker.start()
    assert entered.wait(10)
    fast = tap(fast_input)
    release.set()
    worker.join(10)
    assert torch.equal(fast["0"], fast_input) and torch.equal(fast["2"], fast_input)
    assert torch.equal(result["slow"]["0"], slow_input) and torch.equal(result["slow"]["2"], slow_input)

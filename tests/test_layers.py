import pytest
import torch

from featx.backbones import load_backbone
from featx.backbones.layers import LayerTap, describe_layers
from featx.backbones.pooling import check_pooling, pool
from featx.errors import InputError, UnknownNameError


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
    tap = LayerTap(model, ["layer2", "layer4.1.relu_1", "flatten"], "resnet18", lean=False)  # layer2: a container
    calls.clear()
    out = tap(torch.zeros(2, 3, 64, 64))
    assert set(out) == {"layer2", "layer4.1.relu_1", "flatten"}
    assert out["layer2"].shape == (2, 128, 8, 8) and out["flatten"].shape == (2, 512)
    assert len(calls) == 1  # the stem ran once for all three layers


def test_hooked_layers_come_from_one_forward_pass_too():
    # models that do not trace with torch.fx are read with forward hooks: still one pass
    from featx.backbones.layers import Addressable

    model = load_backbone("resnet18", "random").model
    calls = []
    model.conv1.register_forward_hook(lambda *a: calls.append(1))
    names = [name for name, _ in model.named_modules() if name]
    tap = LayerTap(model, ["layer2", "layer4.1", "avgpool"], "resnet18", Addressable(names, traced=False))
    out = tap(torch.zeros(2, 3, 64, 64))
    assert len(calls) == 1 and set(out) == {"layer2", "layer4.1", "avgpool"}
    assert out["avgpool"].shape == (2, 512, 1, 1)


def test_unknown_layer_lists_close_names_and_the_lister():
    model = load_backbone("resnet18", "random").model
    with pytest.raises(UnknownNameError,
                       match=r"unknown layer 'layer4.1.relu_9'.*layer4.1.relu.*featx layers resnet18"):
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


def test_channels_last_layers_are_pooled_over_their_spatial_axes():
    from featx.backbones.layers import output_format

    nchw = torch.rand(2, 5, 3, 3)
    nhwc = nchw.permute(0, 2, 3, 1).contiguous()
    for how in ("avg", "max", "avgmax", "gem", "flatten"):
        assert torch.allclose(pool(nhwc, how, "NHWC"), pool(nchw, how)), how
    assert output_format((5, 3, 3)) == "NCHW" and output_format((3, 3, 5)) == "NHWC"
    assert output_format((4, 4, 4), (4, 6, 6)) == "NCHW" and output_format((4, 4, 4), (6, 6, 4)) == "NHWC"
    assert output_format((7, 5)) == "NLC" and output_format((9,)) == "NC"


def test_extractor_records_and_respects_nhwc_layers(tmp_path):
    # timm's ConvNeXt runs its LayerNorm channels-last: (N, 16, 16, 40) at 64 px
    from featx.extract.extractor import Extractor
    from featx.extract.job import extract
    from featx.preprocess.views import normalise
    from tests.conftest import make_class_folder

    layers = ["stages.0.blocks.0.norm.layer_norm", "stages.0.blocks.0.conv_dw"]
    extractor = Extractor("timm:convnext_atto", weights="random", layers=layers, image_size=64, workers=0, device="cpu")
    assert extractor.config["layer_formats"] == {layers[0]: "NHWC", layers[1]: "NCHW"}
    assert extractor.pooled_dims == {layers[0]: 40, layers[1]: 40}  # channels, not the 16-pixel width
    views = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    raw = extractor.tap(normalise(views, extractor.backbone.preprocess))[layers[0]]
    assert raw.shape == (2, 16, 16, 40)
    assert torch.allclose(extractor.forward(views)[layers[0]], raw.mean((1, 2)), atol=1e-5)
    store = extract(make_class_folder(tmp_path / "imgs", per_class=1), tmp_path / "s", model="timm:convnext_atto",
                    weights="random", layers=layers, image_size=64, workers=0, device="cpu", progress=False)
    assert store.manifest["layers"][layers[0]]["format"] == "NHWC"
    assert store.manifest["layers"][layers[1]]["format"] == "NCHW"
    assert store.features(layers[0]).shape == (2, 40)


def test_flatten_with_tta_is_refused_before_loading_the_model(monkeypatch):
    import importlib

    extract_module = importlib.import_module("featx.extract.extractor")

    monkeypatch.setattr(extract_module, "load_backbone", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(InputError, match=r"--pool flatten cannot be combined with --tta 2"):
        extract_module.Extractor("resnet18", weights="random", pool="flatten", tta=2)
    with pytest.raises(InputError, match=r"unknown pooling 'median'"):
        extract_module.Extractor("resnet18", weights="random", pool="median")
def test_hooked_capture_is_per_call_when_forward_passes_overlap():
    """The service runs forward passes from several threads; a pass paused half-way must still
    return its own activations, not those of a pass that ran meanwhile (it did before: one dict)."""
    import threading

    import torch
    from torch import nn

    from featx.backbones.layers import Addressable, LayerTap

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

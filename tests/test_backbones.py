import pytest
import torch

from featx.backbones import DEFAULT_BACKBONE, list_backbones, load_backbone, register_backbone
from featx.backbones.families import TORCHVISION
from featx.errors import UnknownNameError, WeightsError

REQUIRED = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "squeezenet1_0", "squeezenet1_1",
            "resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "efficientnet_lite0"]


def test_listing_has_required_models_and_bundled_is_offline():
    infos = {info.name: info for info in list_backbones()}
    assert set(REQUIRED) <= set(infos)
    assert infos[DEFAULT_BACKBONE].offline and infos[DEFAULT_BACKBONE].source == "bundled"


def test_pattern_listing_includes_timm():
    names = [info.name for info in list_backbones("timm:mobilenetv3*")]
    assert "timm:mobilenetv3_small_100" in names and all(n.startswith("timm:mobilenetv3") for n in names)


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("resnet18", TORCHVISION)


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"unknown model 'resnt18'.*resnet18.*featx models"):
        load_backbone("resnt18", "random")


def test_bundled_weights_are_real_and_verified():
    backbone = load_backbone(DEFAULT_BACKBONE)
    assert backbone.weights_sha256 == "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    # preprocessing comes from timm's pretrained config of tf_efficientnet_lite0, not constants here
    assert backbone.preprocess.mean == (0.5, 0.5, 0.5) and backbone.preprocess.interpolation == "bicubic"
    first_conv = next(iter(backbone.model.state_dict().values()))
    assert first_conv.abs().sum() > 0 and not torch.isnan(first_conv).any()


def test_random_weights_are_seeded():
    a = load_backbone("resnet18", "random").model.state_dict()
    b = load_backbone("resnet18", "random").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_roundtrip(tmp_path, suffix):
    source = load_backbone("mobilenet_v3_small", "random").model
    with torch.no_grad():
        next(source.parameters()).add_(1.0)  # differ from the seeded random weights
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = load_backbone("mobilenet_v3_small", str(path))
    assert loaded.weights_id == f"file:weights{suffix}" and len(loaded.weights_sha256) == 64
    assert torch.equal(next(loaded.model.parameters()), next(source.parameters()))


def test_weights_of_another_model_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(load_backbone("resnet18", "random").model.state_dict(), path)
    with pytest.raises(WeightsError, match="do not fit model 'mobilenet_v3_small'"):
        load_backbone("mobilenet_v3_small", str(path))


def test_offline_default_weights_error_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache
    import torch.hub
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("no network")))
    with pytest.raises(WeightsError, match=r"--weights FILE"):
        load_backbone("squeezenet1_1", "default")


def test_image_size_override_keeps_ratio():
    backbone = load_backbone("resnet18", "random", image_size=112)
    assert backbone.preprocess.crop_size == 112 and backbone.preprocess.resize_size == 128

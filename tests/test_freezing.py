import pytest
import torch

from pipelines.backbones import build_backbone
from pipelines.config import TrainConfig
from pipelines.engine import make_optimizer
from pipelines.errors import ConfigError
from pipelines.freezing import apply_policy, head_prefix, stages


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["timm/test_resnet", "torchvision/resnet18", "torchvision/mobilenet_v3_small"])
def test_frozen_trains_only_the_head(name):
    model = build_backbone(name, 4).model
    report = apply_policy(model, "frozen")
    head = head_prefix(model)
    assert trainable_names(model) == {f"{head}.weight", f"{head}.bias"}
    assert report.params_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.params_trainable < report.params_total


def test_optimizer_gets_only_trainable_parameters():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, "last_n:1")
    optimizer = make_optimizer(model, TrainConfig())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, "frozen")
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.randn(8, 3, 32, 32) * 5 + 3)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)


def test_unfrozen_batchnorm_statistics_do_move():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, "unfrozen")
    before = model.state_dict()["conv1.1.running_mean"].clone()
    model.train()
    model(torch.randn(8, 3, 32, 32) * 5 + 3)
    assert not torch.equal(before, model.state_dict()["conv1.1.running_mean"])


def test_last_n_unfreezes_the_last_stages():
    model = build_backbone("timm/test_resnet", 4).model
    report = apply_policy(model, "last_n:2")
    names = trainable_names(model)
    assert report.stages_total == 5 and report.stages_trainable == 2
    assert any(n.startswith("layer4.") for n in names) and any(n.startswith("layer3.") for n in names)
    assert not any(n.startswith(("layer2.", "layer1.", "conv1.")) for n in names)
    assert "fc.weight" in names


def test_torchvision_natural_stages():
    model = build_backbone("torchvision/resnet18", 4).model
    firsts = [group[0].split(".")[0] for group in stages(model)]
    assert firsts == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4"]


def test_last_n_beyond_the_stages_is_an_error():
    model = build_backbone("timm/test_resnet", 4).model
    with pytest.raises(ConfigError, match="only 5 stages"):
        apply_policy(model, "last_n:9")


def test_unfrozen_trains_everything():
    model = build_backbone("timm/test_resnet", 4).model
    report = apply_policy(model, "unfrozen")
    assert report.params_trainable == report.params_total


def test_thawed_batchnorm_trains_again_and_export_drops_the_hook():
    from pipelines.engine import copy_model

    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, "frozen")
    for p in model.parameters():  # what gradual unfreezing does to a stage
        p.requires_grad = True
    model.train()
    before = model.state_dict()["conv1.1.running_mean"].clone()
    model(torch.randn(8, 3, 32, 32) + 2)
    assert not torch.equal(before, model.state_dict()["conv1.1.running_mean"])
    exported = copy_model(model)
    assert all(not m._forward_pre_hooks for m in exported.modules())


def test_gradual_thaws_the_last_stages_first_at_the_given_epochs(tmp_path):
    from pipelines.config import load_config
    from pipelines.run import execute, prepare
    from tests.conftest import tiny_overrides

    class Watch:
        def __init__(self):
            self.trainable = {}

        def on_epoch_end(self, epoch, metrics):
            self.trainable[epoch] = metrics["model/params_trainable"]

    cfg = load_config(None, tiny_overrides(tmp_path, **{
        "model.freeze": "gradual", "model.unfreeze_at": "2,3", "train.epochs": 3}))
    prepared = prepare(cfg)
    model = prepared.backbone.model
    groups = stages(model)
    size = {i: sum(dict(model.named_parameters())[n].numel() for n in g) for i, g in enumerate(groups)}
    head = prepared.freeze.params_trainable
    watch = Watch()
    execute(prepared, listeners=(watch,))
    assert watch.trainable == {1: head, 2: head + size[4], 3: head + size[4] + size[3]}


@pytest.mark.parametrize("overrides, message", [
    ({"model.unfreeze_at": "3,2"}, "must be increasing"),
    ({"model.unfreeze_at": "1"}, "within 2..train.epochs"),
    ({"model.unfreeze_at": "2,9"}, "within 2..train.epochs"),
])
def test_gradual_schedule_is_validated(overrides, message):
    from pipelines.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config(None, {"model.freeze": "gradual", "train.epochs": 4, **overrides})


def test_gradual_schedule_longer_than_the_stages():
    model = build_backbone("timm/test_resnet", 4).model
    with pytest.raises(ConfigError, match="6 thaw epochs .* only 5 stages"):
        apply_policy(model, "gradual", unfreeze_at=(2, 3, 4, 5, 6, 7))

import math

import pytest
import torch

from pipelines.config import TrainConfig
from pipelines.errors import ConfigError
from pipelines.models.backbones import build_backbone, head_prefix
from pipelines.models.freezing import apply_policy, stages
from pipelines.policy import Policy
from pipelines.training.optimizer import make_optimizer


def trainable_names(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", ["timm/test_resnet", "torchvision/resnet18", "torchvision/mobilenet_v3_small"])
def test_frozen_trains_only_the_head(name):
    model = build_backbone(name, 4).model
    report = apply_policy(model, Policy.parse("frozen"))
    head = head_prefix(model)
    assert trainable_names(model) == {f"{head}.weight", f"{head}.bias"}
    assert report.params_trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.params_trainable < report.params_total


def test_optimizer_gets_only_trainable_parameters():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("last_n:1"))
    optimizer = make_optimizer(model, TrainConfig())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}


def test_frozen_batchnorm_statistics_do_not_move_in_train_mode():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("frozen"))
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()
    model(torch.randn(8, 3, 32, 32) * 5 + 3)
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert before and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bn", ["frozen", "train"])
@pytest.mark.parametrize("policy", ["frozen", "last_n:1", "gradual", "unfrozen", "layer_decay:0.7"])
def test_model_bn_decides_what_frozen_stages_batchnorm_does(policy, bn):
    """conv1.1 is the stem's BatchNorm, frozen under the first three policies: its statistics move in
    train mode only with bn=train; under unfrozen and layer_decay nothing is frozen, so they always move."""
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("frozen", bn="frozen"))  # a model re-used with another setting sheds the old hooks
    apply_policy(model, Policy.parse(policy, unfreeze_at=(2,), bn=bn))
    stem_frozen = not model.conv1[1].weight.requires_grad
    assert stem_frozen == (policy in ("frozen", "last_n:1", "gradual"))
    before = model.state_dict()["conv1.1.running_mean"].clone()
    model.train()
    model(torch.randn(8, 3, 32, 32) * 5 + 3)
    moved = not torch.equal(before, model.state_dict()["conv1.1.running_mean"])
    assert moved == (bn == "train" or not stem_frozen)


def test_unfrozen_batchnorm_statistics_do_move():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("unfrozen"))
    before = model.state_dict()["conv1.1.running_mean"].clone()
    model.train()
    model(torch.randn(8, 3, 32, 32) * 5 + 3)
    assert not torch.equal(before, model.state_dict()["conv1.1.running_mean"])


def test_last_n_unfreezes_the_last_stages():
    model = build_backbone("timm/test_resnet", 4).model
    report = apply_policy(model, Policy.parse("last_n:2"))
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
        apply_policy(model, Policy.parse("last_n:9"))


def test_unfrozen_trains_everything():
    model = build_backbone("timm/test_resnet", 4).model
    report = apply_policy(model, Policy.parse("unfrozen"))
    assert report.params_trainable == report.params_total


def test_thawed_batchnorm_trains_again_and_export_drops_the_hook():
    from pipelines.models.portable import export_copy

    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("frozen"))
    for p in model.parameters():  # what gradual unfreezing does to a stage
        p.requires_grad = True
    model.train()
    before = model.state_dict()["conv1.1.running_mean"].clone()
    model(torch.randn(8, 3, 32, 32) + 2)
    assert not torch.equal(before, model.state_dict()["conv1.1.running_mean"])
    exported = export_copy(model)
    assert all(not m._forward_pre_hooks for m in exported.modules())


def test_gradual_thaws_the_last_stages_first_at_the_given_epochs(tmp_path):
    from pipelines.config import load_config
    from pipelines.training.trainer import execute, prepare
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
        apply_policy(model, Policy.parse("gradual", unfreeze_at=(2, 3, 4, 5, 6, 7)))


@pytest.mark.parametrize("name", ["timm/tf_efficientnet_lite0", "timm/test_resnet", "torchvision/resnet18"])
def test_layer_decay_groups_and_lrs_are_timms(name):
    from timm.optim import param_groups_layer_decay

    from pipelines.training.optimizer import layer_decay_groups

    model = build_backbone(name, 4).model
    report = apply_policy(model, Policy.parse("layer_decay:0.7"))
    assert report.params_trainable == report.params_total and report.policy == "layer_decay:0.7"
    optimizer = make_optimizer(model, TrainConfig(lr=0.01), layer_decay=0.7)
    got = [({id(p) for p in g["params"]}, g["lr"], g["weight_decay"]) for g in optimizer.param_groups]
    grouped = model if hasattr(model, "group_matcher") else None
    if grouped is not None:  # timm's own grouping, by the model's fine group_matcher
        timms = param_groups_layer_decay(model, weight_decay=1e-4, layer_decay=0.7,
                                         no_weight_decay_list=model.no_weight_decay()
                                         if hasattr(model, "no_weight_decay") else ())
        assert got == [({id(p) for p in g["params"]}, pytest.approx(0.01 * g["lr_scale"]), g["weight_decay"])
                       for g in timms]
    else:
        assert len(layer_decay_groups(model, 0.01, 1e-4, 0.7)) == len(got)
    lr_of = lr_by_name(model, optimizer)
    head = head_prefix(model)
    depth = round(math.log(min(lr_of.values()) / 0.01, 0.7))
    assert lr_of[f"{head}.weight"] == pytest.approx(0.01)  # the head at lr
    assert depth >= 4 and len({round(v, 12) for v in lr_of.values()}) == depth + 1  # one lr per layer group
    assert in_order_of_depth(model, lr_of)


def lr_by_name(model, optimizer) -> dict[str, float]:
    """Each parameter's lr, from the optimizer group that holds it."""
    return {n: g["lr"] for g in optimizer.param_groups for n, p in model.named_parameters()
            if any(p is q for q in g["params"])}


def in_order_of_depth(model, lr_of) -> bool:
    """Input side lowest: lrs never fall from one parameter to the next in the model's own order."""
    lrs = [lr_of[n] for n, _ in model.named_parameters()]
    return all(a <= b + 1e-15 for a, b in zip(lrs, lrs[1:], strict=False))


def test_layer_decay_on_torchvision_uses_the_freeze_stages():
    model = build_backbone("torchvision/resnet18", 4).model
    apply_policy(model, Policy.parse("layer_decay:0.5"))
    optimizer = make_optimizer(model, TrainConfig(lr=0.08), layer_decay=0.5)
    lr_of = lr_by_name(model, optimizer)
    # stages: conv1, bn1, layer1..4 (see test_torchvision_natural_stages), then the head
    expected = {"conv1.weight": 0.08 / 64, "bn1.weight": 0.08 / 32, "layer1.0.conv1.weight": 0.08 / 16,
                "layer2.0.conv1.weight": 0.08 / 8, "layer3.0.conv1.weight": 0.08 / 4,
                "layer4.1.conv2.weight": 0.08 / 2, "fc.weight": 0.08}
    assert {n: lr_of[n] for n in expected} == pytest.approx(expected)


def test_cosine_schedule_keeps_the_layer_decay_ratios():
    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("layer_decay:0.7"))
    optimizer = make_optimizer(model, TrainConfig(lr=0.01), layer_decay=0.7)
    start = [g["lr"] for g in optimizer.param_groups]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4)
    optimizer.step()
    scheduler.step()
    now = [g["lr"] for g in optimizer.param_groups]
    ratios = [a / b for a, b in zip(now, start, strict=True)]
    assert now[0] < start[0] and ratios == pytest.approx([ratios[0]] * len(now))


@pytest.mark.parametrize("text, message", [
    ("layer_decay:0", "must be a number in \\(0, 1\\)"), ("layer_decay:1.5", "must be a number in \\(0, 1\\)"),
    ("layer_decay:x", "must be a number in \\(0, 1\\)"), ("layer_decay:nan", "must be a number in \\(0, 1\\)"),
    ("layer_decay", "unknown freeze policy"),
])
def test_layer_decay_factor_is_validated(text, message):
    with pytest.raises(ConfigError, match=message):
        Policy.parse(text)


def test_layer_decay_run_trains_every_layer_and_logs_the_heads_lr(tmp_path):
    from pipelines.config import load_config
    from pipelines.training.trainer import execute, prepare
    from tests.conftest import tiny_overrides

    class Watch:
        def __init__(self):
            self.rows = {}

        def on_epoch_end(self, epoch, metrics):
            self.rows[epoch] = metrics

    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "layer_decay:0.5", "train.epochs": 1,
                                                        "train.lr": 0.002}))
    prepared = prepare(cfg)
    assert prepared.freeze.params_trainable == prepared.freeze.params_total
    assert not prepared.feature_cache.on
    stem_before = next(prepared.backbone.model.parameters()).detach().clone()
    watch = Watch()
    execute(prepared, listeners=(watch,))
    assert watch.rows[1]["lr"] == pytest.approx(0.002)
    assert not torch.equal(stem_before, next(prepared.backbone.model.parameters()).detach())


def test_each_epoch_evaluates_with_its_own_batchnorm_statistics():
    """The layers that normalise by batch statistics restart theirs each epoch as an exact average of its
    batches (momentum None); the ones the policy holds in eval keep theirs; the momentum comes back after."""
    from pipelines.models.freezing import restart_batchnorm_statistics, restore_momentum

    model = build_backbone("timm/test_resnet", 4).model
    apply_policy(model, Policy.parse("last_n:1"))
    held, adapting = model.conv1[1], model.layer4[0].bn1  # the stem is frozen, the last stage trains
    stem_before = held.running_mean.clone()
    momenta = {}
    restart_batchnorm_statistics(model, momenta)
    assert held not in momenta and momenta[adapting] == 0.1 and adapting.momentum is None
    model.train()
    seen = []
    adapting.register_forward_pre_hook(lambda m, args: seen.append(args[0].mean((0, 2, 3))))
    for _ in range(3):
        model(torch.randn(8, 3, 32, 32) * 3 + 1)
    assert torch.allclose(adapting.running_mean, torch.stack(seen).mean(0), atol=1e-5)  # the epoch's average
    assert torch.equal(held.running_mean, stem_before)
    restore_momentum(momenta)
    assert adapting.momentum == 0.1


@pytest.mark.parametrize("name", ["timm/test_resnet", "torchvision/mobilenet_v3_small"])
def test_bias_and_norm_train_their_part_by_module_type_and_hold_the_statistics(name):
    """BitFit's biases and the normalisation layers' affine parameters, chosen by the module that holds them
    (a conv's bias is a bias, a BatchNorm's weight is a norm parameter); their BatchNorm statistics stay."""
    for part in ("bias", "norm"):
        model = build_backbone(name, 4).model
        apply_policy(model, Policy.parse(part))
        head = head_prefix(model)
        norms = {f"{m}.{p}" for m, mod in model.named_modules() if isinstance(mod, torch.nn.BatchNorm2d)
                 for p, _ in mod.named_parameters(recurse=False)}
        biases = {f"{m}.bias" for m, mod in model.named_modules()
                  if isinstance(getattr(mod, "bias", None), torch.nn.Parameter)}
        expected = (biases if part == "bias" else norms) | {f"{head}.weight", f"{head}.bias"}
        assert trainable_names(model) == expected
        before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        model.train()
        model(torch.randn(4, 3, 32, 32) * 5)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    apply_policy(model, Policy.parse("norm", bn="train"))  # bn=train: batch statistics, as for other policies
    model.train()
    model(torch.randn(4, 3, 32, 32) * 5)
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_stage_k_trains_that_stage_and_the_head():
    model = build_backbone("timm/test_resnet", 4).model
    groups = stages(model)
    report = apply_policy(model, Policy.parse("stage:1"))
    head = head_prefix(model)
    assert trainable_names(model) == set(groups[1]) | {f"{head}.weight", f"{head}.bias"}
    assert report.stages_trainable == 1
    with pytest.raises(ConfigError, match=f"stage:{len(groups)} but .* has {len(groups)} stages: stage:0 to"):
        apply_policy(model, Policy.parse(f"stage:{len(groups)}"))


@pytest.mark.parametrize("text, kind, probe", [("lp_ft", "unfrozen", True), ("lp_ft:last_n:2", "last_n", True),
                                               ("stage:0", "stage", False), ("bias", "bias", False)])
def test_new_policies_parse_and_print_back(text, kind, probe):
    policy = Policy.parse(text)
    assert (policy.kind, policy.probe_head, str(policy)) == (kind, probe, text)
    assert Policy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["lp_ft:frozen", "lp_ft:linear_probe", "lp_ft:lp_ft", "stage:", "stage:-1", "biases"])
def test_bad_new_policies_are_one_line_errors(text):
    with pytest.raises(ConfigError) as error:
        Policy.parse(text)
    assert "\n" not in str(error.value)


def test_a_network_that_cannot_be_cut_trains_uncached_and_says_why():
    """LeViT's forward does more than chain its modules (find_cut's check fails, whatever it raises): the run's
    plan says so instead of failing."""
    from pipelines.models.prefix import find_cut

    model = build_backbone("timm/levit_128s", 4).model
    cut, why = find_cut(model, len(stages(model)) - 1, torch.randn(1, 3, 224, 224))
    assert cut is None and why

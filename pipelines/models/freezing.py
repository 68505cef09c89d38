"""A freeze policy (pipelines/policy.py) applied to a network: which stages train, and whether
BatchNorm in frozen stages keeps its statistics. The one module that writes `requires_grad`.

Stages are timm's own coarse `group_matcher` groups; for torchvision models, the model's natural
top-level stages (resnet's layer1..4, mobilenet's features[i], ...).

`model.bn` says what BatchNorm layers of frozen stages do in training mode. `frozen` (the default):
a BatchNorm layer whose parameters are all frozen normalises with its running statistics and never
updates them, even under `model.train()` (the classic silent bug when only requires_grad is switched
off). A forward pre-hook enforces it, reading requires_grad at each call, so thawing a stage later
(gradual unfreezing) brings its BatchNorm back to training mode with no extra bookkeeping. The hook
keeps PyTorch's fused batch_norm kernel: timm's FrozenBatchNorm2d computes the same in several
element-wise passes and made frozen Lite0 training 14% slower here. `train`: frozen stages'
BatchNorm layers normalise with batch statistics and update their running ones (their affine
parameters stay frozen), which can help when the target images are far from the pretraining ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm import layers as timm_layers
from timm.models import group_parameters
from torch import nn

from pipelines.errors import ConfigError
from pipelines.models.backbones import head_prefix
from pipelines.policy import Policy

_MIN_STAGES = 4
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)
# The `norm` policy's layers, by type: torch's batch/instance norms (timm's BatchNormAct2d is one), group and
# layer norms (timm's LayerNorm2d and GroupNorm subclass them), and timm's RMS norms.
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, *([nn.RMSNorm] if hasattr(nn, "RMSNorm") else []),
          *(getattr(timm_layers, name) for name in ("RmsNorm", "RmsNorm2d") if hasattr(timm_layers, name)))
# The `bias` policy's parameters: a layer's bias, and the attention biases that are not called `bias` (torch's
# MultiheadAttention.in_proj_bias; timm's BEiT/EVA q_bias and v_bias), the ones BitFit cares most about.
_BIASES = ("bias", "in_proj_bias", "q_bias", "k_bias", "v_bias")


@dataclass(frozen=True)
class FreezeReport:
    policy: str
    stages_total: int
    stages_trainable: int
    params_trainable: int
    params_total: int


def stages(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped by stage, input side first, head excluded."""
    head = head_prefix(model)
    if hasattr(model, "group_matcher"):
        groups = list(group_parameters(model, model.group_matcher(coarse=True)).values())
    else:
        groups = _natural_stages(model, head)
    groups = [[p for p in g if not under(p, head)] for g in groups]
    return [g for g in groups if g]


def under(name: str, prefix: str) -> bool:
    """Whether `name` is the module or parameter `prefix`, or inside it."""
    return name == prefix or name.startswith(prefix + ".")


def _natural_stages(model: nn.Module, head: str) -> list[list[str]]:
    # Start from the top-level children and split the largest one until there are a few stages:
    # resnet keeps layer1..4, mobilenet's single `features` opens into its blocks, ViT's encoder
    # into its layers.
    prefixes = _parametrized_children(model, "", head)
    while len(prefixes) < _MIN_STAGES:
        sizes = [sum(p.numel() for p in model.get_submodule(p).parameters()) for p in prefixes]
        largest = prefixes[sizes.index(max(sizes))]
        inner = _parametrized_children(model.get_submodule(largest), largest + ".", head)
        if len(inner) < 2:
            break
        prefixes[prefixes.index(largest):prefixes.index(largest) + 1] = inner
    groups: list[list[str]] = [[] for _ in prefixes]
    loose: list[str] = []  # parameters held by a container itself (a class token, say) join the first stage
    for pname, _ in model.named_parameters():
        owner = next((i for i, p in enumerate(prefixes) if under(pname, p)), None)
        (groups[owner] if owner is not None else loose).append(pname)
    if groups:
        groups[0] = loose + groups[0]
    return groups


def _parametrized_children(module: nn.Module, prefix: str, head: str) -> list[str]:
    """Children holding parameters; a child that contains the head opens up around it."""
    out = []
    for name, child in module.named_children():
        path = prefix + name
        if under(head, path) and path != head:
            out += _parametrized_children(child, path + ".", head)
        elif path != head and any(True for _ in child.parameters()):
            out.append(path)
    return out


def apply_policy(model: nn.Module, policy: Policy) -> FreezeReport:
    """Set requires_grad per the policy, and BatchNorm per its `bn` (module docstring); `gradual` starts
    frozen (thaw() brings its stages in, on the policy's schedule). The head always trains."""
    groups = stages(model)
    trained = policy.trainable_stages(len(groups), type(model).__name__)
    keep = {name for index in trained for name in groups[index]} | part_parameters(model, policy)
    frozen = {name for group in groups for name in group} - keep
    set_frozen(model, frozen, hold_batchnorm=policy.holds_batchnorm)
    if policy.part and policy.holds_batchnorm:  # their affine parameters train, their statistics stay ImageNet's
        head = head_prefix(model)
        for name, module in model.named_modules():
            if isinstance(module, _BATCHNORM) and not under(name, head) and not held_in_eval(module):
                module.register_forward_pre_hook(_hold_eval)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeReport(str(policy), len(groups), len(trained), trainable, sum(p.numel() for p in model.parameters()))


def part_parameters(model: nn.Module, policy: Policy) -> set[str]:
    """`bias`: each layer's own bias parameters (_BIASES); `norm`: every parameter of the normalisation layers; outside
    the head, chosen by the module that holds them, not by their names. Empty for the other policies."""
    if not policy.part:
        return set()
    head, names = head_prefix(model), set()
    for prefix, module in model.named_modules():
        if under(prefix, head):
            continue
        for pname, param in module.named_parameters(recurse=False):
            if (policy.part == "bias" and any(param is getattr(module, b, None) for b in _BIASES)) or (
                    policy.part == "norm" and isinstance(module, _NORMS)):
                names.add(f"{prefix}.{pname}" if prefix else pname)
    if not names:
        what = "bias" if policy.part == "bias" else "normalisation-layer"
        raise ConfigError(f"freeze {policy}: {type(model).__name__} has no {what} parameters outside its head")
    return names


def thaw_schedule(model: nn.Module, policy: Policy) -> dict[int, list[str]]:
    """Epoch → parameter names to thaw before it (gradual); empty for every other policy, whose
    network may be a head alone (cached features): no stages to ask for."""
    return policy.thaw_schedule(stages(model)) if policy.kind == "gradual" else {}


def thaw(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """Train these parameters from now on (their BatchNorm layers return to training mode: the hook);
    returns them, for the optimizer's new group."""
    params = dict(model.named_parameters())
    thawed = [params[name] for name in names]
    for param in thawed:
        param.requires_grad = True
    return thawed


def set_frozen(model: nn.Module, frozen: set[str], hold_batchnorm: bool = True) -> None:
    """requires_grad off for `frozen`; with `hold_batchnorm`, their BatchNorm layers keep their statistics."""
    for name, param in model.named_parameters():
        param.requires_grad = name not in frozen
    if not hold_batchnorm:
        without_policy_hooks(model)
        return
    for module in model.modules():
        if isinstance(module, _BATCHNORM) and _hold_eval_if_frozen not in module._forward_pre_hooks.values():
            module.register_forward_pre_hook(_hold_eval_if_frozen)


def restart_batchnorm_statistics(model: nn.Module, momenta: dict[nn.Module, float | None]) -> None:
    """Before an epoch: every BatchNorm layer that normalises by batch statistics in training (all but those
    the policy holds in eval) forgets its running statistics and averages this epoch's batches exactly
    (momentum None). With momentum 0.1 and a few dozen steps, the statistics a run was evaluated with still
    carried much of ImageNet's: val/acc 0.615 against 0.880 for the same weights on small digits, and
    layer_decay, whose early layers barely move, lost most (benchmarks/investigate_bn_stats.py). `momenta`
    keeps each layer's own momentum for restore_momentum."""
    for module in model.modules():
        if isinstance(module, _BATCHNORM) and not held_in_eval(module):
            momenta.setdefault(module, module.momentum)
            module.reset_running_stats()
            module.momentum = None


def restore_momentum(momenta: dict[nn.Module, float | None]) -> None:
    """After training: each layer's own momentum back (an exported model fine-tunes as it was built to)."""
    for module, momentum in momenta.items():
        module.momentum = momentum


def held_in_eval(module: nn.Module) -> bool:
    """Whether a policy's hook keeps this layer in eval mode now, whatever model.train() says."""
    hooks = module._forward_pre_hooks.values()
    return _hold_eval in hooks or (_hold_eval_if_frozen in hooks and _frozen(module))


def _frozen(module: nn.Module) -> bool:
    """None of the layer's own parameters trains: what makes the hook hold its BatchNorm in eval."""
    return not any(p.requires_grad for p in module.parameters(recurse=False))


def _hold_eval_if_frozen(module: nn.Module, args) -> None:
    if module.training and _frozen(module):
        module.training = False


def _hold_eval(module: nn.Module, args) -> None:
    """bias and norm with model.bn frozen: the layer's affine parameters train, its statistics stay fixed."""
    module.training = False


def without_policy_hooks(model: nn.Module) -> nn.Module:
    """Drop the hooks (in place) before export, so a pickled model needs no freezeframe code to load."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if hook in (_hold_eval_if_frozen, _hold_eval):
                del module._forward_pre_hooks[key]
    return model

"""The optimizer a run trains with, and its step: timm's factory, with timm's layer-wise lr decay for
`layer_decay:<f>`.

Only parameters that require grad reach it, and norms and biases get no weight decay (timm's rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import timm.optim
import torch
from timm.optim import param_groups_layer_decay
from torch import nn

from pipelines.config import TrainConfig
from pipelines.models.freezing import stages


def make_optimizer(model: nn.Module, cfg: TrainConfig, layer_decay: float | None = None) -> torch.optim.Optimizer:
    kwargs = {"momentum": cfg.momentum} if cfg.optimizer == "sgd" else {}
    params = model if layer_decay is None else layer_decay_groups(model, cfg.lr, cfg.weight_decay, layer_decay)
    return timm.optim.create_optimizer_v2(params, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          **kwargs)


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, decay: float) -> list[dict]:
    """timm's `param_groups_layer_decay` (BEiT's recipe): the head trains at `lr`, each layer group
    before it at `decay` times the next one's lr.

    timm's groups carry an `lr_scale` that timm's own schedulers apply; torch's schedulers (ours) scale
    each group's `lr`, so the scale is applied here once and the cosine schedule keeps the ratios.
    """
    grouped = model if hasattr(model, "group_matcher") else _StageGrouping(model)
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    groups = param_groups_layer_decay(grouped, weight_decay=weight_decay, no_weight_decay_list=no_decay,
                                      layer_decay=decay)
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    return groups


class _StageGrouping:
    """What timm's layer-decay grouping asks of a model, for one without a `group_matcher` (torchvision's):
    the freeze policies' stages, input side first, and the head after them. Without it timm would put
    every parameter in one group, and the decay would do nothing."""

    def __init__(self, model: nn.Module):
        self._model = model
        groups = stages(model)
        self._stage_of = {name: index for index, names in enumerate(groups) for name in names}
        self._head = len(groups)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self._model.named_parameters()

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        return lambda name: self._stage_of.get(name, self._head)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward and one optimizer step, loss-scaled when fp16 needs it: every training step, and the
    batch-size ceiling probe's (ceiling.py), so the probe measures the step that trains."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

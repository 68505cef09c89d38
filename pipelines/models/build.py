"""The network a training trains: a backbone by name from its weights source, a fresh head, the freeze policy."""

from __future__ import annotations

import torch

from pipelines.config import RunConfig
from pipelines.models.backbones import Backbone, build_backbone
from pipelines.models.freezing import FreezeReport, apply_policy
from pipelines.policy import Policy


def build_model(cfg: RunConfig, num_classes: int, weights: str | None = None,
                state_dict: dict[str, torch.Tensor] | None = None,
                policy: Policy | None = None) -> tuple[Backbone, FreezeReport]:
    """The backbone from its weights source (the config's, unless `weights` says otherwise), a fresh head,
    and the freeze policy (the config's, unless `policy` says otherwise)."""
    backbone = build_backbone(cfg.model.backbone, num_classes, cfg.model.weights if weights is None else weights,
                              cfg.model.drop_rate, state_dict=state_dict)
    return backbone, apply_policy(backbone.model, policy or cfg.model.policy)

"""The single-run function that train, compare and search all call: prepare (validate), then execute.

`prepare` builds the data, model and freeze policy and fails fast on bad input, before any
tracking run is touched; `execute` trains and returns everything a tracker may want to log.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from sklearn.metrics import classification_report
from torch import nn

from pipelines import config as config_mod
from pipelines.config import RunConfig
from pipelines.data.loaders import DataBundle, build_data, denormalize, make_loaders
from pipelines.data.sources import load_dataset
from pipelines.errors import ConfigError, first_line
from pipelines.models.backbones import Backbone, build_backbone, head_module
from pipelines.models.freezing import FreezeReport, apply_policy, thaw_schedule
from pipelines.models.weight_sources import check_source
from pipelines.policy import Policy
from pipelines.reports.predictions import predictions_csv
from pipelines.training import distributed, feature_cache
from pipelines.training.engine import FitResult, Listener, fit
from pipelines.training.probe import ProbeResult, run_probe
from pipelines.training.runtime import resolve_device, seed_everything


@dataclass
class PreparedRun:
    cfg: RunConfig
    backbone: Backbone
    data: DataBundle
    freeze: FreezeReport
    device: torch.device
    config_digest: str
    feature_cache: feature_cache.CachePlan = feature_cache.CachePlan("off", "not planned yet")

    @property
    def policy(self) -> Policy:
        return self.cfg.model.policy

    @property
    def checkpoint_dir(self) -> Path:
        name = slug(f"{self.backbone.full_name}-{self.cfg.model.freeze}-seed{self.cfg.seed}-{self.config_digest}")
        return Path(self.cfg.train.checkpoint_dir) / name

    def input_samples(self, count: int = 32) -> tuple[torch.Tensor, list[int]]:
        """The first train batch as the model sees it (denormalised to [0, 1]) and its labels, for the
        inputs plot. Drawn with torch's RNG forked, so plotting changes nothing about training."""
        with torch.random.fork_rng(devices=[]):
            x, y = next(iter(make_loaders(self.data, count, 0, self.cfg.seed)["train"]))
        return denormalize(x, self.backbone.preprocessing), y.tolist()


@dataclass
class RunOutcome:
    prepared: PreparedRun
    fit: FitResult
    report_text: str
    report_dict: dict
    predictions_csv: str  # one row per test image: reports/test_predictions.csv
    probe: ProbeResult | None = None  # linear_probe: the C chosen and every C tried


def slug(text: str) -> str:
    """A file-name-safe form of a name: no separators, no '..', nothing that can leave its folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "run"


def prepare(cfg: RunConfig, state_dict: dict[str, torch.Tensor] | None = None) -> PreparedRun:
    """Everything that can reject the input, in the order a user would fix it."""
    device = resolve_device(cfg.train.device)
    distributed.check_devices(cfg.train.devices, device)
    device = distributed.start(device)  # under torchrun: this rank's device, in the process group
    if state_dict is None:
        check_source(cfg.model.weights)
    raw = load_dataset(cfg.data.dataset, cfg.data.root)
    seed_everything(cfg.seed)  # the fresh head's initialisation is part of the experiment
    backbone, freeze = build_model(cfg, len(raw.class_names), state_dict=state_dict)
    _check_image_size(backbone, cfg.data.image_size)
    if cfg.model.policy.kind == "linear_probe":
        _check_linear_head(backbone)
    data = build_data(cfg.data, raw, backbone.preprocessing)
    prepared = PreparedRun(cfg, backbone, data, freeze, device, config_mod.digest(cfg))
    prepared.feature_cache = feature_cache.plan(prepared)
    return prepared


def build_model(cfg: RunConfig, num_classes: int, weights: str | None = None,
                state_dict: dict[str, torch.Tensor] | None = None,
                policy: Policy | None = None) -> tuple[Backbone, FreezeReport]:
    """The network a run trains: the backbone from its weights source (the config's, unless `weights` says
    otherwise), a fresh head, and the freeze policy (the config's, unless `policy` says otherwise)."""
    backbone = build_backbone(cfg.model.backbone, num_classes, cfg.model.weights if weights is None else weights,
                              cfg.model.drop_rate, state_dict=state_dict)
    return backbone, apply_policy(backbone.model, policy or cfg.model.policy)


def _check_linear_head(backbone: Backbone) -> None:
    """linear_probe loads a logistic regression into the network's head: it must be one Linear with a bias."""
    head = head_module(backbone.model)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ConfigError(f"linear_probe needs a Linear head with a bias; {backbone.full_name}'s classifier is "
                          f"{type(head).__name__}: use frozen for it")


def _check_image_size(backbone: Backbone, size: int) -> None:
    """Smaller than the network's total stride, the last stage sees less than one pixel: reject it.

    A dry forward pass then catches what the stride does not (a ViT's fixed input size, say).
    """
    model = backbone.model
    feature_info = getattr(model, "feature_info", None)
    stride = feature_info[-1].get("reduction", 32) if feature_info else 32
    if size < stride:
        raise ConfigError(f"data.image_size {size} is too small for {backbone.full_name}: "
                          f"it must be at least its total stride, {stride}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, size, size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        raise ConfigError(f"data.image_size {size} does not fit {backbone.full_name}: {first_line(exc)}") from None
    finally:
        model.train(was_training)


def execute(prepared: PreparedRun, listeners: tuple[Listener, ...] = ()) -> RunOutcome:
    cfg = prepared.cfg
    seed_everything(cfg.seed)
    if prepared.policy.kind == "linear_probe":  # no epochs: the head is fitted to convergence (probe.py)
        result, probe = run_probe(prepared, listeners)
        return _outcome(prepared, result, probe)
    model, train_cfg, extra = prepared.backbone.model, cfg.train, {}
    if not prepared.feature_cache.on:
        loaders = make_loaders(prepared.data, cfg.train.batch_size, cfg.data.num_workers, cfg.seed,
                               pin_memory=prepared.device.type == "cuda")
    else:  # the head trains on the backbone's features, computed once (pipelines/training/feature_cache.py)
        tick = time.perf_counter()
        found, origin = feature_cache.features(prepared, batch_size=max(64, cfg.train.batch_size))
        extra = {"perf/feature_extraction_s": time.perf_counter() - tick, "feature_cache_source": origin}
        loaders = feature_cache.head_loaders(found, cfg.train.batch_size, cfg.seed)
        model = head_module(model)
        train_cfg = dataclasses.replace(cfg.train, channels_last=False)  # features are [N, D]
    policy = prepared.policy
    result = fit(model, loaders, train_cfg, len(prepared.data.class_names), prepared.device,
                 checkpoint_dir=prepared.checkpoint_dir, listeners=listeners, thaw=thaw_schedule(model, policy),
                 thaw_lr_mult=policy.unfreeze_lr_mult, layer_decay=policy.layer_decay)
    result.extra.update(extra)
    return _outcome(prepared, result)


def _outcome(prepared: PreparedRun, result: FitResult, probe: ProbeResult | None = None) -> RunOutcome:
    y_true, y_pred = result.test_predictions
    names = prepared.data.class_names
    kwargs = dict(labels=list(range(len(names))), target_names=names, zero_division=0)
    return RunOutcome(
        prepared=prepared, fit=result,
        report_text=classification_report(y_true, y_pred, digits=4, **kwargs),
        report_dict=classification_report(y_true, y_pred, output_dict=True, **kwargs),
        predictions_csv=predictions_csv(result, prepared.data), probe=probe,
    )

"""The one training that train, compare and search all call: prepare (validate), then execute.

`prepare` builds the data, model and freeze policy and fails fast on bad input, before any
MLflow run is touched; `execute` trains and returns everything a tracker may want to log.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from sklearn.metrics import classification_report
from torch import nn

from pipelines import config as config_mod
from pipelines.config import RunConfig
from pipelines.data.loaders import build_data, make_loaders
from pipelines.data.sources import load_dataset
from pipelines.errors import ConfigError, first_line
from pipelines.models.backbones import Backbone, head_module
from pipelines.models.build import build_model
from pipelines.models.prefix import suffix_view
from pipelines.models.weight_sources import check_source
from pipelines.reports.predictions import predictions_csv
from pipelines.training import distributed, feature_cache
from pipelines.training.device import resolve_device, seed_everything
from pipelines.training.engine import FitSetup, Listener, fit
from pipelines.training.probe import run_probe, start_from_probe
from pipelines.training.results import FitResult, PreparedTraining, ProbeResult, TrainingOutcome
from pipelines.training.stepper import evaluate_shifts


def prepare(cfg: RunConfig, state_dict: dict[str, torch.Tensor] | None = None) -> PreparedTraining:
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
    if cfg.model.policy.kind == "linear_probe" or cfg.model.policy.probe_head:
        _check_linear_head(backbone)
    data = build_data(cfg.data, raw, backbone.preprocessing)
    prepared = PreparedTraining(cfg, backbone, data, freeze, device, config_mod.digest(cfg))
    prepared.feature_cache = feature_cache.plan(prepared)
    return prepared


def _check_linear_head(backbone: Backbone) -> None:
    """linear_probe and lp_ft load a logistic regression into the network's head: one Linear with a bias."""
    head = head_module(backbone.model)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ConfigError(f"linear_probe and lp_ft need a Linear head with a bias; {backbone.full_name}'s "
                          f"classifier is {type(head).__name__}: use frozen (or unfrozen, for lp_ft) for it")


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


def execute(prepared: PreparedTraining, listeners: tuple[Listener, ...] = ()) -> TrainingOutcome:
    cfg = prepared.cfg
    seed_everything(cfg.seed)
    if prepared.policy.kind == "linear_probe":  # no epochs: the head is fitted to convergence (probe.py)
        result, probe = run_probe(prepared, listeners)
        return _outcome(prepared, result, probe)
    model, train_cfg, extra, probe = prepared.backbone.model, cfg.train, {}, None
    if prepared.policy.probe_head:  # lp_ft: the head starts from the converged probe, then the policy trains
        probe, extra = start_from_probe(prepared)
        seed_everything(cfg.seed)  # the training's shuffles as without the probe before it
    plan = prepared.feature_cache
    if not plan.on:
        loaders = make_loaders(prepared.data, cfg.train.batch_size, cfg.data.num_workers, cfg.seed,
                               pin_memory=prepared.device.type == "cuda")
    else:  # trained on what the fixed part computes, once (pipelines/training/feature_cache.py, prefix.py)
        found, cached = feature_cache.head_features(prepared, max(64, cfg.train.batch_size), plan.cut)
        extra = {**extra, **cached}
        loaders = feature_cache.head_loaders(found, cfg.train.batch_size, cfg.seed)
        if plan.cut is None:  # frozen: the head alone, on features [N, D]
            model = head_module(model)
        if found["train"][0].dim() != 4:  # features [N, D], a transformer's tokens [N, T, D]: no channels
            train_cfg = dataclasses.replace(cfg.train, channels_last=False)
    setup = FitSetup(train_cfg, len(prepared.data.class_names), prepared.device, prepared.policy,
                     prepared.checkpoint_dir)
    with suffix_view(model, plan.cut) if plan.cut else contextlib.nullcontext():
        result = fit(model, loaders, setup, listeners)
    result.extra.update(extra)
    return _outcome(prepared, result, probe)


def _outcome(prepared: PreparedTraining, result: FitResult, probe: ProbeResult | None = None) -> TrainingOutcome:
    y_true, y_pred = result.test_predictions
    names = prepared.data.class_names
    kwargs = dict(labels=list(range(len(names))), target_names=names, zero_division=0)
    return TrainingOutcome(
        prepared=prepared, fit=result,
        report_text=classification_report(y_true, y_pred, digits=4, **kwargs),
        report_dict=classification_report(y_true, y_pred, output_dict=True, **kwargs),
        predictions_csv=predictions_csv(result.test_predictions, result.test_p_true, prepared.data), probe=probe,
        shifted=evaluate_shifts(prepared),  # the best epoch's network under eval.shifts
    )

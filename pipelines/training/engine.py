"""The training loop: device-agnostic, seeded, checkpointed each epoch, reporting through listeners.

The engine logs nothing itself. Each epoch's metrics go to every listener (the MLflow tracker,
Optuna's pruning reporter, ...) as a plain dict; the end result comes back as a FitResult. Under
data-parallel training every process runs this loop; process 0 alone writes checkpoints and prints (its caller
gives the listeners to process 0 alone).
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipelines.config import MONITORS, TrainConfig
from pipelines.models import freezing
from pipelines.policy import Policy
from pipelines.training import checkpoints, distributed
from pipelines.training.device import grad_scaler, peak_mb, reset_peak
from pipelines.training.optimizer import make_optimizer
from pipelines.training.results import FitResult
from pipelines.training.stepper import EpochPass, Stepper


class Listener(Protocol):
    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass(frozen=True)
class FitSetup:
    """What `fit` trains with, besides the network and its loaders."""
    cfg: TrainConfig
    num_classes: int
    device: torch.device
    policy: Policy  # the freeze policy: its thaw schedule (gradual), thawed lr and layer decay
    checkpoint_dir: Path | None = None  # None: no checkpoints, no resume


def fit(model: nn.Module, loaders: dict[str, DataLoader], setup: FitSetup,
        listeners: tuple[Listener, ...] = ()) -> FitResult:
    """Train, validate each epoch, test the best epoch. Parameters the policy thaws at an epoch (gradual
    unfreezing) join the optimizer then, at lr * unfreeze_lr_mult; with layer decay each layer group
    before the head runs at `layer_decay` times the next one's lr."""
    cfg, device, checkpoint_dir, policy = setup.cfg, setup.device, setup.checkpoint_dir, setup.policy
    thaw, thaw_lr_mult = freezing.thaw_schedule(model, policy), policy.unfreeze_lr_mult
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    optimizer = make_optimizer(model, cfg, policy.layer_decay)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
                 if cfg.scheduler == "cosine" else None)
    scaler = grad_scaler(device, cfg.amp)
    objects = checkpoints.TrainingObjects(model, optimizer, scheduler, scaler, loaders["train"].generator)
    mode = MONITORS[cfg.monitor]
    state = checkpoints.TrainState(best_value=-math.inf if mode == "max" else math.inf)
    payload = checkpoints.read(checkpoint_dir) if cfg.resume and checkpoint_dir is not None else None
    if payload is not None:
        for epoch in sorted(e for e in thaw if e <= payload["epoch"]):  # same optimizer groups as when saved
            _thaw(model, optimizer, scheduler, thaw[epoch], thaw_lr_mult)
        state = checkpoints.restore(payload, objects)
    resumed_from = state.epoch
    for past in state.history:  # a resumed run re-reports what it already did, so nothing is lost
        _tell(listeners, int(past["epoch"]), past)

    reset_peak(device)  # this run's peak, not the worker's earlier ones (perf/peak_memory_mb, the guard)
    step = Stepper(model, device, cfg, setup.num_classes, optimizer, scaler)
    step.train_model = distributed.wrap(model, device)  # DDP's wrapper under data-parallel training
    stopped_early, started, checkpoint_s = False, time.perf_counter(), 0.0
    momenta: dict[nn.Module, float | None] = {}
    for epoch in range(state.epoch + 1, cfg.epochs + 1):
        if epoch in thaw:
            _thaw(model, optimizer, scheduler, thaw[epoch], thaw_lr_mult)
            step.train_model = distributed.wrap(model, device)  # DDP again, over the new trainable set
        freezing.restart_batchnorm_statistics(model, momenta)  # evaluated with this epoch's statistics
        tick = time.perf_counter()
        train_metrics = step.run_epoch(loaders["train"], "train", desc=f"epoch {epoch}/{cfg.epochs} train").metrics
        distributed.same_buffers(model)  # every process evaluates the model process 0 saves
        train_seconds = time.perf_counter() - tick
        val = step.run_epoch(loaders["val"], "val", desc=f"epoch {epoch} val")
        val_metrics, val_confusion = val.metrics, val.confusion
        lr = max(group["lr"] for group in optimizer.param_groups)  # the head's: other groups run lower
        if scheduler is not None:
            scheduler.step()
        epoch_s = time.perf_counter() - tick
        row = epoch_row(epoch, {**train_metrics, **val_metrics, "lr": lr}, epoch_s,
                        len(loaders["train"].dataset) / max(train_seconds, 1e-9), model, device)
        row["perf/steady_images_per_s"] = steady_images_per_s([*state.history, row])
        value = row[cfg.monitor]
        if (value > state.best_value) if mode == "max" else (value < state.best_value):
            state.best_value, state.best_epoch = value, epoch
            state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            state.best_confusion = val_confusion
        state.epoch = epoch
        state.history.append(row)
        if checkpoint_dir is not None and distributed.is_main():
            saving = time.perf_counter()
            checkpoints.save(checkpoint_dir, state, objects)
            checkpoint_s += time.perf_counter() - saving
        if distributed.is_main():  # flushed: through a pipe (mlflow run, | tee) each epoch shows as it ends
            tqdm.write(_summary(row, cfg.epochs))
            sys.stdout.flush()
        _tell(listeners, epoch, row)
        if cfg.early_stopping_patience and epoch - state.best_epoch >= cfg.early_stopping_patience:
            stopped_early = True
            break

    freezing.restore_momentum(momenta)
    if state.best_state is not None:
        model.load_state_dict(state.best_state)  # test the best epoch, not the last one
    test = step.run_epoch(loaders["test"], "test", desc="test")
    return fit_result(state.history, (state.best_epoch, state.best_value, state.best_confusion), test, device,
                      stopped_early=stopped_early, resumed_from_epoch=resumed_from,
                      train_seconds=time.perf_counter() - started, extra={"perf/checkpoint_s": checkpoint_s})


def epoch_row(epoch: int, metrics: dict[str, float], epoch_s: float, images_per_s: float, model: nn.Module,
              device: torch.device) -> dict[str, float]:
    """One epoch's row, as listeners, checkpoints and the history hold it: the engine's epochs and the
    linear probe's one fit alike (perf/steady_images_per_s is the caller's: it needs the history)."""
    return {"epoch": epoch, **metrics, "perf/epoch_s": epoch_s, "perf/images_per_s": images_per_s,
            "model/params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "perf/peak_memory_mb": peak_mb(device)}  # so far: a pruned or failed run has it too


def fit_result(history: list[dict[str, float]], best: tuple[int, float, torch.Tensor | None], test: EpochPass,
               device: torch.device, **rest) -> FitResult:
    """The result from the epochs' rows, the best epoch (number, monitored value, validation confusion) and
    the test pass; `rest`: FitResult's other fields, its `extra` joined to the run's throughput and peak."""
    best_epoch, best_value, val_confusion = best
    extra = {**final_perf(history, device), **rest.pop("extra", {})}
    return FitResult(history=history, best_epoch=best_epoch, best_value=best_value,
                     confusion={"val": val_confusion, "test": test.confusion}, test=test.metrics,
                     test_predictions=(test.true.cpu().numpy(), test.predicted.cpu().numpy()),
                     test_p_true=test.p_true.cpu().numpy(), extra=extra, **rest)


def _tell(listeners: tuple[Listener, ...], epoch: int, row: dict[str, float]) -> None:
    """The epoch's metrics to each listener (on process 0 alone, under data-parallel training); a listener that
    stops the run (a pruned trial, a lost tracking store) stops every process at this same point."""
    stopping = None
    try:
        for listener in listeners:
            listener.on_epoch_end(epoch, row)
    except Exception as exc:  # noqa: BLE001 - raised again here, on process 0, after the others were told
        stopping = exc
    distributed.stop_together(stopping)


def _thaw(model: nn.Module, optimizer, scheduler, names: list[str], lr_mult: float) -> None:
    new = freezing.thaw(model, names)
    base_lr = optimizer.defaults["lr"] * lr_mult
    first = optimizer.param_groups[0]
    progress = first["lr"] / first.get("initial_lr", first["lr"])  # where the lr schedule is now
    optimizer.add_param_group({"params": new, "lr": base_lr * progress, "initial_lr": base_lr})
    if scheduler is not None:
        scheduler.base_lrs.append(base_lr)


def final_perf(history: list[dict[str, float]], device: torch.device) -> dict[str, float]:
    """The run's throughput and peak as its last epoch logged them (one value, not a second reading that
    would also count the test pass); computed afresh for a history resumed from an older checkpoint."""
    last = history[-1] if history else {}
    return {"perf/steady_images_per_s": last.get("perf/steady_images_per_s", steady_images_per_s(history)),
            "perf/peak_memory_mb": last.get("perf/peak_memory_mb", peak_mb(device))}


def steady_images_per_s(history: list[dict[str, float]]) -> float:
    """Training throughput once warmed up: the median epoch after the first (which pays for lazy
    initialisation, allocator growth and cold caches); the only epoch when there is one."""
    rates = [row["perf/images_per_s"] for row in history if "perf/images_per_s" in row]
    return statistics.median(rates[1:] or rates) if rates else 0.0


def _summary(row: dict[str, float], epochs: int) -> str:
    return (f"epoch {int(row['epoch'])}/{epochs}  train/loss {row['train/loss']:.4f}  "
            f"train/acc {row['train/acc']:.4f}  val/loss {row['val/loss']:.4f}  val/acc {row['val/acc']:.4f}  "
            f"{row['perf/epoch_s']:.1f}s  {row['perf/images_per_s']:.0f} img/s")

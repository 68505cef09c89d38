"""One pass over a split's loader, training or evaluating: the part of the loop that touches batches, and
the classification metrics it computes (torchmetrics collections, reported as `<split>/<name>`).

Under data-parallel training (pipelines/training/distributed.py) each process passes over its shard and
the pass's predictions, targets and loss are gathered from every process before the metrics are computed,
so every process reports the same numbers, those of one process over the whole split.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)
from tqdm.auto import tqdm

from pipelines.config import TrainConfig
from pipelines.data.shards import eval_shard, real_in_batch
from pipelines.data.shifted import shifted_test_set
from pipelines.errors import TrainingError
from pipelines.processes import world_size
from pipelines.reports.predictions import predictions_csv
from pipelines.shifts import parse_shifts
from pipelines.training import distributed
from pipelines.training.device import autocast_context, check_limit
from pipelines.training.optimizer import optimizer_step
from pipelines.training.results import ShiftedTest

if TYPE_CHECKING:
    from pipelines.training.results import PreparedTraining


def make_metrics(num_classes: int, device: torch.device | str = "cpu") -> MetricCollection:
    """acc (micro, i.e. plain accuracy), macro precision/recall/F1, and the confusion matrix.

    sync_on_compute=False: under data-parallel training every process updates them with the predictions
    already gathered from all processes (EpochPass, below); torchmetrics' own sync would count each image N times
    (ratios survive that, the confusion matrix does not)."""
    local = {"sync_on_compute": False}
    return MetricCollection({
        "acc": MulticlassAccuracy(num_classes, average="micro", **local),
        "precision_macro": MulticlassPrecision(num_classes, average="macro", zero_division=0, **local),
        "recall_macro": MulticlassRecall(num_classes, average="macro", zero_division=0, **local),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", zero_division=0, **local),
        "confusion": MulticlassConfusionMatrix(num_classes, **local),
    }).to(device)


def compute(metrics: MetricCollection, split: str) -> tuple[dict[str, float], torch.Tensor]:
    """`{"val/acc": ...}` scalars and the confusion matrix (rows: true class), then reset."""
    values = metrics.compute()
    confusion = values.pop("confusion").cpu()
    metrics.reset()
    return {f"{split}/{k}": float(v) for k, v in values.items()}, confusion


class EpochPass(NamedTuple):
    """One pass over a split: its metrics (`<split>/acc`, ...), confusion matrix, true and predicted classes,
    and (the test passes only, clean and shifted: nothing else reads it) each image's probability of its true class."""

    metrics: dict[str, float]
    confusion: torch.Tensor
    true: torch.Tensor
    predicted: torch.Tensor
    p_true: torch.Tensor


def evaluate(model: nn.Module, loaders: dict[str, DataLoader], num_classes: int, device: torch.device,
             label_smoothing: float = 0.0) -> dict[str, EpochPass]:
    """Each split's evaluation pass, the training split's included (a head fitted by other means, as the
    linear probe is, reports the same metrics as one the engine trained): float32, contiguous."""
    plain = TrainConfig(amp=False, channels_last=False, label_smoothing=label_smoothing)
    step = Stepper(model, device, plain, num_classes)
    model.to(device)
    return {split: step.run_epoch(loader, split, desc=f"{split} eval", train=False)
            for split, loader in loaders.items()}


def evaluate_shifts(prepared: PreparedTraining) -> dict[str, ShiftedTest]:
    """The run's final network tested again on the test split under each of eval.shifts (pipelines/data/shifted.py):
    shift name → its metrics (`shift/<name>/acc`, ...) and per-image predictions; empty without shifts. The whole
    network runs, so a cached-feature or linear_probe run's head, trained in place inside it, is tested too; under
    data-parallel training each process takes its shard of a shifted split, and the pass gathers them in order."""
    shifts = parse_shifts(prepared.cfg.eval.shifts)
    if not shifts:
        return {}
    cfg, device, data, model = prepared.cfg, prepared.device, prepared.data, prepared.backbone.model
    # the clean test's precision and memory format (a cached-feature run moved its head alone)
    model.to(device=device, memory_format=torch.channels_last if cfg.train.channels_last else torch.contiguous_format)
    step, found = Stepper(model, device, cfg.train, len(data.class_names)), {}
    for shift in shifts:
        loader = DataLoader(eval_shard(shifted_test_set(data, shift)), batch_size=cfg.train.batch_size // world_size(),
                            num_workers=cfg.data.num_workers, pin_memory=device.type == "cuda")
        done = step.run_epoch(loader, f"shift/{shift.name}", desc=f"test under {shift.spec}", train=False)
        predictions = (done.true.cpu().numpy(), done.predicted.cpu().numpy())
        found[shift.name] = ShiftedTest(shift.spec, done.metrics,
                                        predictions_csv(predictions, done.p_true.cpu().numpy(), data))
    return found


class Stepper:
    """One pass over a loader, training or evaluating, with the run's device/AMP/memory-format choices."""

    def __init__(self, model: nn.Module, device: torch.device, cfg: TrainConfig, num_classes: int,
                 optimizer: torch.optim.Optimizer | None = None, scaler: torch.amp.GradScaler | None = None):
        """`cfg` gives the loss's label smoothing, AMP, the memory format and the CPU memory guard; without an
        optimizer the stepper only evaluates."""
        self.model, self.optimizer, self.scaler, self.device = model, optimizer, scaler, device
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.metrics = make_metrics(num_classes, device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.amp, self.memory_limit_mb = cfg.amp, cfg.memory_limit_mb
        self.train_model = model  # DDP's wrapper under data-parallel training (the engine sets it): it syncs gradients

    def _to_device(self, x: torch.Tensor, y: torch.Tensor):
        non_blocking = self.device.type == "cuda"
        return (x.to(self.device, memory_format=self.memory_format, non_blocking=non_blocking),
                y.to(self.device, non_blocking=non_blocking))

    def run_epoch(self, loader: DataLoader, split: str, desc: str, train: bool | None = None) -> EpochPass:
        """One pass over `split`'s loader: training on "train" (unless `train` says otherwise), evaluating
        on the others."""
        train = split == "train" if train is None else train
        self.model.train(train)
        batches, preds, targets, p_true = 0, [], [], []
        # The loss is summed on the device and looked at every `check_every` batches: each look is a
        # host-device sync, which on CUDA would stall the queue of kernels once a batch (on the CPU it
        # is free, so every batch is checked before its step).
        loss_sum = torch.zeros((), device=self.device)
        check_every = 1 if self.device.type == "cpu" else 16
        grad_mode = torch.enable_grad() if train else torch.inference_mode()
        forward = self.train_model if train else self.model
        with grad_mode:
            for x, y in tqdm(loader, desc=desc, leave=False, disable=None if distributed.is_main() else True,
                             dynamic_ncols=True):
                x, y = self._to_device(x, y)
                # data-parallel: the batch's trailing repeats (a process with fewer images) weigh nothing
                real = real_in_batch(loader, batches, len(y)) if train else len(y)
                with autocast_context(self.device, self.amp):
                    logits = forward(x)
                    loss = self.criterion(logits[:real], y[:real]) if real else logits.sum() * 0.0
                loss_sum += loss.detach().float() * real
                batches += 1
                if batches % check_every == 0:
                    self._check_finite(loss_sum, split, batches)
                if train:
                    check_limit(self.memory_limit_mb)
                    optimizer_step(loss * distributed.loss_weight(loader, batches - 1, real), self.optimizer,
                                   self.scaler)
                # the metrics take the epoch's predicted classes in one update at its end: per batch, their
                # bookkeeping cost more than a linear head's whole step (40 % of a cached-feature epoch)
                preds.append(logits.detach()[:real].argmax(1))
                targets.append(y[:real])
                # per image: what the paired statistics and "which images does it miss?" read
                if split == "test" or split.startswith("shift/"):
                    p_true.append(logits.detach().float().softmax(1).gather(1, y[:, None]).squeeze(1))
        if batches % check_every:  # the batches since the last check
            self._check_finite(loss_sum, split, batches)
        empty = torch.empty(0, dtype=torch.long, device=self.device)
        predicted = distributed.gather(torch.cat(preds) if preds else empty)  # every process's, in process order
        true = distributed.gather(torch.cat(targets) if targets else empty)
        p_true = distributed.gather(torch.cat(p_true) if p_true else torch.empty(0, device=self.device))
        if len(true):
            self.metrics.update(predicted, true)
        values, confusion = compute(self.metrics, split)
        values[f"{split}/loss"] = distributed.total(loss_sum.item()) / max(len(true), 1)
        return EpochPass(values, confusion, true, predicted, p_true)

    def _check_finite(self, loss_sum: torch.Tensor, split: str, batches: int) -> None:
        if not torch.isfinite(loss_sum):
            where = f"at batch {batches}" if self.device.type == "cpu" else f"by batch {batches}"
            lr = f" (lr {self.optimizer.param_groups[0]['lr']:.3g}): lower train.lr" if self.optimizer else ""
            raise TrainingError(f"{split} loss became {loss_sum.item()} {where}{lr}")

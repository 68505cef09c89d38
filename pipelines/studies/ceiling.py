"""The largest batch size, a multiple of 8, whose training step fits in memory, found before a search
so that no trial has to run out of memory to find it.

One step is what a trial's every step does at the run's settings: forward, backward and the
optimizer's step (its state included) for the backbone under its freeze policy, at the image size,
with AMP and channels_last as configured, on the run's device. A batch size fits when the step's
own memory, grown by a safety margin, stays within what the run may use: the CPU guard
`train.memory_limit_mb` (else the machine's available memory), or the GPU's free memory, a CUDA
out-of-memory error meaning "no". Memory grows with the batch, so a binary search over the
candidates finds the edge in log2(n) + 1 steps, the largest candidate first (it often fits).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pipelines.config import RunConfig
from pipelines.data.sources import load_dataset
from pipelines.errors import first_line
from pipelines.models.build import build_model
from pipelines.training.device import (
    autocast_context,
    available_mb,
    free_memory,
    grad_scaler,
    in_use_mb,
    peak_mb,
    reset_peak,
    resolve_device,
)
from pipelines.training.optimizer import make_optimizer, optimizer_step

log = logging.getLogger(__name__)
MARGIN = 0.1  # a step's memory counts 10% more: fragmentation, the loaders, the metrics


@dataclass(frozen=True)
class StepMeasurement:
    """One training step measured at one batch size ("probe" is the linear probe's word)."""
    batch_size: int
    peak_mb: float  # the step's peak (NaN: out of memory before it could be read)
    need_mb: float  # what the run would hold with the margin
    fits: bool


@dataclass(frozen=True)
class Ceiling:
    backbone: str
    freeze: str
    device: str  # "cpu", or "cuda:<GPU name>": a ceiling holds for one kind of device
    limit_mb: float
    ceiling: int  # the largest candidate that fits; 0 when none does
    steps: tuple[StepMeasurement, ...]  # every batch size tried, ascending
    seconds: float

    def to_dict(self) -> dict:
        """As stored in a study: the steps under "probes", the key studies have always held (the storage's
        readers, optuna-dashboard's users and older freezeframes read it)."""
        found = asdict(self)
        found["probes"] = found.pop("steps")
        return found

    @classmethod
    def from_dict(cls, found: dict) -> Ceiling:
        rest = {k: v for k, v in found.items() if k != "probes"}
        return cls(**rest, steps=tuple(StepMeasurement(**step) for step in found["probes"]))


def device_name(device: torch.device) -> str:
    return f"cuda:{torch.cuda.get_device_name(device)}" if device.type == "cuda" else device.type


def ceiling_key(cfg: RunConfig) -> str:
    """What a step's memory depends on (not the weights' values, the lr or the data's content)."""
    device = resolve_device(cfg.train.device)
    m, t = cfg.model, cfg.train
    parts = [m.backbone, m.freeze, m.bn, m.drop_rate, cfg.data.image_size, cfg.data.dataset, t.optimizer, t.amp,
             t.channels_last, t.memory_limit_mb, device_name(device), t.devices]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def find_ceiling(cfg: RunConfig, batch_sizes: tuple[int, ...]) -> Ceiling:
    """Binary search over `batch_sizes` (ascending, global batches) for the largest whose step fits.

    With train.devices N, each process steps on batch / N: the step is measured at that size, on one device.
    A GPU holds one process, so the step must fit its memory, as must each process's train.memory_limit_mb
    guard; without the guard, the N processes on the CPU share its available memory: each gets 1 / N."""
    started = time.perf_counter()
    device = resolve_device(cfg.train.device)
    step = _StepMeter(cfg, device)
    devices = cfg.train.devices
    shared = device.type == "cpu" and not cfg.train.memory_limit_mb
    limit = available_mb(device, cfg.train.memory_limit_mb) / (devices if shared else 1)
    measured: dict[int, StepMeasurement] = {}

    # DDP keeps its own copy of the gradients it all-reduces (its buckets): one more trainable-parameter set
    buckets_mb = step.trainable_mb() if devices > 1 else 0.0

    def fits(index: int) -> bool:
        size = batch_sizes[index]
        measured[size] = dataclasses.replace(step.measure(size // devices, limit, buckets_mb), batch_size=size)
        return measured[size].fits

    try:
        low, high = 0, len(batch_sizes) - 1
        if fits(high):
            best = high
        else:  # invariant: everything above `high` fails; `best` is the largest index known to fit
            best, high = -1, high - 1
            while low <= high:
                middle = (low + high) // 2
                if fits(middle):
                    best, low = middle, middle + 1
                else:
                    high = middle - 1
    finally:
        step.close()
    return Ceiling(cfg.model.backbone, cfg.model.freeze, device_name(device), round(limit, 1),
                   batch_sizes[best] if best >= 0 else 0, tuple(measured[b] for b in sorted(measured)),
                   round(time.perf_counter() - started, 2))


class _StepMeter:
    """The run's model, policy and optimizer, built once; measure() times one step at a batch size."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        classes = len(load_dataset(cfg.data.dataset, cfg.data.root).class_names)
        # built as the run builds it, but with random weights (their values do not change memory: no
        # download, no registry read) and, for gradual, in its last, largest state: every stage thawed
        policy = cfg.model.policy.thawed()
        self.model = build_model(cfg, classes, weights="none", policy=policy)[0].model
        self.memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
        self.model.to(device=device, memory_format=self.memory_format).train()
        self.optimizer = make_optimizer(self.model, cfg.train, policy.layer_decay)
        self.scaler = grad_scaler(device, cfg.train.amp)
        self.criterion = nn.CrossEntropyLoss()
        self.classes = classes

    def trainable_mb(self) -> float:
        return sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad) / 2**20

    def measure(self, batch_size: int, limit_mb: float, extra_mb: float = 0.0) -> StepMeasurement:
        free_memory()
        reset_peak(self.device)
        base = in_use_mb(self.device)
        size = self.cfg.data.image_size
        try:
            x = torch.randn(batch_size, 3, size, size, device=self.device).to(memory_format=self.memory_format)
            y = torch.randint(0, self.classes, (batch_size,), device=self.device)
            with autocast_context(self.device, self.cfg.train.amp):
                loss = self.criterion(self.model(x), y)
            optimizer_step(loss, self.optimizer, self.scaler)
            del x, y, loss
            peak = peak_mb(self.device)
        except torch.OutOfMemoryError:
            peak = math.nan
        except RuntimeError as exc:  # cuDNN/cuBLAS failing to allocate, a kernel past 32-bit indexing
            if self.device.type != "cuda":
                raise
            log.info("batch size %s does not run on %s: %s", batch_size, self.device, first_line(exc))
            peak = math.nan
        self.optimizer.zero_grad(set_to_none=True)
        need = base + (peak - base) * (1 + MARGIN) + extra_mb
        return StepMeasurement(batch_size, round(peak, 1), round(need, 1), bool(need <= limit_mb))  # NaN <= x is False

    def close(self) -> None:
        del self.model, self.optimizer
        free_memory()
        reset_peak(self.device)

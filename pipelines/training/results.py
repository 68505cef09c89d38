"""What a training produces, as plain values shared by the trainer, the engine, the linear probe and the
tracker: the prepared training (before any MLflow run), the fit's result, the probe's, and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.config import RunConfig
from pipelines.data.loaders import DataBundle, denormalize, make_loaders
from pipelines.models.backbones import Backbone
from pipelines.models.freezing import FreezeReport
from pipelines.policy import Policy
from pipelines.state import slug
from pipelines.training.feature_cache import CachePlan


@dataclass
class PreparedTraining:
    """Everything a training needs, built and checked before its MLflow run opens."""
    cfg: RunConfig
    backbone: Backbone
    data: DataBundle
    freeze: FreezeReport
    device: torch.device
    config_digest: str
    feature_cache: CachePlan = CachePlan("off", "not planned yet")

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
class FitResult:
    history: list[dict[str, float]]  # one dict per epoch, "epoch" included
    best_epoch: int
    best_value: float
    test: dict[str, float]
    confusion: dict[str, torch.Tensor]  # "val" (best epoch) and "test"
    test_predictions: tuple[np.ndarray, np.ndarray]  # (y_true, y_pred), in the test split's order
    test_p_true: np.ndarray  # each test example's probability of its true class (softmax), same order
    stopped_early: bool = False
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    NUMBERS = ("history", "best_epoch", "best_value", "test", "stopped_early", "resumed_from_epoch",
               "train_seconds", "extra")

    def numbers(self) -> dict:
        """The result without its per-image arrays (those stay in the run's artifacts), for JSON: what an
        arm's process 0 sends back to the worker, whose objective reads nothing else."""
        return {name: getattr(self, name) for name in self.NUMBERS}

    @classmethod
    def from_numbers(cls, numbers: dict) -> FitResult:
        empty = np.empty(0)
        return cls(**numbers, confusion={}, test_predictions=(empty, empty), test_p_true=empty)


@dataclass(frozen=True)
class ProbeResult:
    c: float  # the chosen C: the best validation accuracy (the smallest C, the strongest penalty, on a tie)
    grid: tuple[tuple[float, float, int], ...]  # (C, validation accuracy, L-BFGS iterations) per C tried
    fit_seconds: float  # the fits and the choice, the feature extraction excepted

    def csv(self) -> str:
        return "c,val_acc,iterations\n" + "".join(f"{c:g},{acc:.6f},{it}\n" for c, acc, it in self.grid)


@dataclass(frozen=True)
class ShiftedTest:
    """The final model on the test split under one of eval.shifts (stepper.evaluate_shifts)."""
    spec: str  # as the config gives it: gaussian_noise:0.1
    metrics: dict[str, float]  # shift/<name>/acc, .../f1_macro, ...: the clean test's metrics
    predictions_csv: str  # test_predictions.csv's format: reports/shift_predictions/<name>.csv


@dataclass
class TrainingOutcome:
    prepared: PreparedTraining
    fit: FitResult
    report_text: str
    report_dict: dict
    predictions_csv: str  # one row per test image: reports/test_predictions.csv
    probe: ProbeResult | None = None  # linear_probe: the C chosen and every C tried
    shifted: dict[str, ShiftedTest] = field(default_factory=dict)  # shift name → its test (eval.shifts)

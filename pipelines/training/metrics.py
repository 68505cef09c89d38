"""Classification metrics as torchmetrics collections, and the keys they are reported under."""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)


def make_metrics(num_classes: int, device: torch.device | str = "cpu") -> MetricCollection:
    """acc (micro, i.e. plain accuracy), macro precision/recall/F1, and the confusion matrix.

    sync_on_compute=False: under data-parallel training every rank updates them with the predictions
    already gathered from all ranks (stepper.py); torchmetrics' own sync would count each image N times
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

"""Per-epoch checkpoints in a local run folder, so an interrupted run loses at most one epoch."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipelines.errors import WeightsError, first_line

log = logging.getLogger(__name__)
FILENAME = "last.pt"


@dataclass
class TrainState:
    epoch: int = 0  # last completed epoch
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_value: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_confusion: torch.Tensor | None = None


@dataclass(frozen=True)
class TrainingObjects:
    """The live objects a checkpoint saves and restores (scheduler and generator may be None)."""
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scaler: torch.amp.GradScaler
    generator: torch.Generator | None


def save(folder: Path, state: TrainState, objects: TrainingObjects) -> Path:
    """Write atomically: a kill during the write leaves the previous checkpoint intact."""
    folder.mkdir(parents=True, exist_ok=True)
    scheduler, generator = objects.scheduler, objects.generator
    current = objects.model.state_dict()
    payload = {
        "epoch": state.epoch, "history": state.history, "best_epoch": state.best_epoch,
        "best_value": state.best_value, "best_state_changes": _changes(state.best_state, current),
        "best_confusion": state.best_confusion, "model": current, "optimizer": objects.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": objects.scaler.state_dict(), "generator": generator.get_state() if generator is not None else None,
    }
    path = folder / FILENAME
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # two processes saving the same config never share a tmp
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _changes(best: dict[str, torch.Tensor] | None, current: dict[str, torch.Tensor]) -> dict | None:
    """The best epoch's tensors that differ from the current ones. All are equal in an epoch that is
    the best so far, and a frozen backbone's always are: the checkpoint holds the network once, not
    twice (a frozen Lite0 wrote 26 MB an epoch, 13 of them a copy)."""
    if best is None:
        return None
    return {k: v for k, v in best.items()
            if k not in current or v.shape != current[k].shape or not torch.equal(v, current[k].detach().to(v.device))}


def _best_state(payload: dict) -> dict[str, torch.Tensor] | None:
    if "best_state_changes" not in payload:  # written before the changes-only format
        return payload["best_state"]
    changes = payload["best_state_changes"]
    return None if changes is None else {**payload["model"], **changes}


def read(folder: Path) -> dict | None:
    path = folder / FILENAME
    if not path.is_file():
        log.warning("resume: no checkpoint at %s, starting from epoch 1", path)
        return None
    # tensors and plain values only: a checkpoint folder shared between machines (resume after a dead
    # worker) is written by whoever can write there, and a full unpickle would run their code
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle and zip errors of many types
        raise WeightsError(f"checkpoint {path} is not loadable as tensors and plain values "
                           f"({first_line(exc, 120)}); delete it to start over") from None


def restore(payload: dict, objects: TrainingObjects) -> TrainState:
    """Load a checkpoint read by `read` into live objects (whose parameter groups must match by now)."""
    scheduler, scaler, generator = objects.scheduler, objects.scaler, objects.generator
    objects.model.load_state_dict(payload["model"])
    objects.optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None and payload["scheduler"] is not None:
        scheduler.load_state_dict(payload["scheduler"])
    scaler.load_state_dict(payload["scaler"])
    if generator is not None and payload["generator"] is not None:
        generator.set_state(payload["generator"])
    log.warning("resumed after epoch %d", payload["epoch"])
    return TrainState(payload["epoch"], payload["history"], payload["best_epoch"], payload["best_value"],
                      _best_state(payload), payload["best_confusion"])

"""`train` and `pretrain`: one tracked run; pretrain also registers the model for later transfer.

With `train.devices: N > 1` the run trains data-parallel on N processes (pipelines/training/distributed.py):
started here under torch.distributed.run, or by the user's own `torchrun --nproc_per_node=N -m freezeframe
train ...`. Process 0 owns the MLflow run (under `mlflow run`, the launcher's); the other processes train beside
it and log nothing."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipelines.config import RunConfig, with_overrides
from pipelines.processes import launch as launch_processes
from pipelines.training import distributed
from tracking import links
from tracking.models.registry import register_run_model
from tracking.runs.session import kill_launcher_run_left_running
from tracking.store import ensure_reachable

if TYPE_CHECKING:  # the training stack (timm, torchvision, sklearn) loads in train_here: a launcher of N
    from freezeframe.training_run import TrainedRun  # processes (train.devices) needs only torch


def train(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    if cfg.train.devices > 1 and distributed.world_size() == 1:
        return launch(args, cfg)
    done = train_here(cfg, "train")
    if done is None:
        return 0
    fit = done.outcome.fit
    print(f"run {done.run_id}: test/acc {fit.test['test/acc']:.4f} (best epoch {fit.best_epoch})")
    print(links.format_links(links.run_links(done.run_id)))
    return 0


def pretrain(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Train on a source dataset and register the model, so `weights=models:/<name>@<alias>` can start
    another backbone's transfer run with no network."""
    cfg = with_overrides(cfg, {"tracking.log_model": True})
    if cfg.train.devices > 1 and distributed.world_size() == 1:
        return launch(args, cfg)
    done = train_here(cfg, "pretrain")
    if done is None:
        return 0
    name = args.registered_model or f"{cfg.model.backbone.replace('/', '-')}-{cfg.data.dataset}"
    test_acc = done.outcome.fit.test["test/acc"]
    uri = register_run_model(done.run_id, name, args.alias,
                             f"{cfg.model.backbone} pretrained on {cfg.data.dataset} "
                             f"({cfg.train.epochs} epochs, test/acc {test_acc:.4f}), run {done.run_id}")
    print(f"registered {uri} (test/acc {test_acc:.4f}); use it with -P weights={uri}")
    found = links.run_links(done.run_id)
    if page := links.registered_model_page(uri):
        found["registered"] = page
    print(links.format_links(found))
    return 0


def launch(args: argparse.Namespace, cfg: RunConfig) -> int:
    """This same command on train.devices processes (the command line checked that the machine has them)."""
    print(f"freezeframe: training on {cfg.train.devices} processes (torch.distributed.run)", flush=True)
    try:
        failed = launch_processes(cfg.train.devices, ["-m", "freezeframe", *args.argv])
    except KeyboardInterrupt as exc:  # Ctrl-C or `mlflow run` cancelled: the processes are down already
        kill_launcher_run_left_running(str(exc))
        raise
    if failed is None:
        return 0
    print(f"freezeframe: {failed}", file=sys.stderr)
    kill_launcher_run_left_running(failed.line)  # process 0 ends its run itself, unless it was the one that died
    return 1


def train_here(cfg: RunConfig, entry_point: str) -> TrainedRun | None:
    """This process's part: the whole tracked run alone or as process 0, the same training without any
    tracking on the other processes (None)."""
    from freezeframe.training_run import prepare_training, train_in_run, train_process  # see TYPE_CHECKING above

    if distributed.world_size() > 1:  # under torchrun: the params show the world size the run had
        cfg = with_overrides(cfg, {"train.devices": distributed.world_size()})

    def in_run() -> TrainedRun:
        ensure_reachable()
        return train_in_run(prepare_training(cfg), entry_point)

    try:
        return train_process(cfg, in_run)
    finally:
        distributed.stop()

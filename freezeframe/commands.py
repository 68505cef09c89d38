"""The entry points' bodies: parse is done, config is loaded; wire pipelines to tracking and run."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys

import torch

from freezeframe.single_run import prepare_run, run_tracked
from pipelines.compare import arm_config, parse_comparison
from pipelines.config import RunConfig, digest
from tracking import comparison, comparison_report
from tracking.registry import register_run_model
from tracking.store import ensure_reachable


def train(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    ensure_reachable()
    prepared = prepare_run(cfg)
    done = run_tracked(prepared, entry_point="train")
    fit = done.outcome.fit
    print(f"run {done.run_id}: test/acc {fit.test['test/acc']:.4f} (best epoch {fit.best_epoch})")
    return 0


def pretrain(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Train on a source dataset and register the model, so `weights=models:/<name>@<alias>` can start
    another backbone's transfer run with no network."""
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, log_model=True))
    ensure_reachable()
    prepared = prepare_run(cfg)
    done = run_tracked(prepared, entry_point="pretrain")
    name = args.registered_model or f"{cfg.model.backbone.replace('/', '-')}-{cfg.data.dataset}"
    test_acc = done.outcome.fit.test["test/acc"]
    uri = register_run_model(done.run_id, name, args.alias,
                             f"{cfg.model.backbone} pretrained on {cfg.data.dataset} "
                             f"({cfg.train.epochs} epochs, test/acc {test_acc:.4f}), run {done.run_id}")
    print(f"registered {uri} (test/acc {test_acc:.4f}); use it with -P weights={uri}")
    return 0


def compare(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Every arm of the grid as a child of one parent; a rerun only runs what is not FINISHED yet."""
    spec = parse_comparison(sections.get("compare"), cfg, source=args.experiment)
    arms = [(arm, arm_config(cfg, arm)) for arm in spec.arms]  # every arm validated before any starts
    ensure_reachable()
    tags = {"dataset": cfg.data.dataset, "experiment_file": args.experiment}
    with comparison.comparison_parent(spec.name, cfg.tracking.experiment_name, tags) as parent:
        parent_id = parent.info.run_id
        comparison.close_stale_arms(parent_id)
        done = comparison.finished_digests(parent_id)
        for index, (arm, arm_cfg) in enumerate(arms, 1):
            if digest(arm_cfg) in done:
                print(f"[{index}/{len(arms)}] {arm.name}: FINISHED earlier (run {done[digest(arm_cfg)]}), skipped")
                continue
            print(f"[{index}/{len(arms)}] {arm.name}", flush=True)
            arm_tags = {comparison.COMPARISON_TAG: spec.name, "arm": arm.name}
            try:
                run_tracked(arm_cfg, entry_point="compare", parent_run_id=parent_id, attach=False, tags=arm_tags)
            except Exception as exc:  # noqa: BLE001 - an arm's failure is recorded on its run; the rest go on
                print(f"[{index}/{len(arms)}] {arm.name} FAILED: {str(exc).splitlines()[0] if str(exc) else exc!r}",
                      file=sys.stderr)
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # an out-of-memory arm must not starve the next one
        rows = comparison_report.log_summary(parent_id, spec.name, comparison.arm_runs(parent_id))
    print(comparison_report.markdown(rows, []))
    return 0


COMMANDS = {"train": train, "pretrain": pretrain, "compare": compare}

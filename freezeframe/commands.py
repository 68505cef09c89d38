"""The entry points' bodies: parse is done, config is loaded; wire pipelines to tracking and run."""

from __future__ import annotations

import argparse
import dataclasses

from freezeframe.single_run import prepare_run, run_tracked
from pipelines.config import RunConfig
from pipelines.freezing import parse_policy
from tracking import summary
from tracking.session import tracked_run
from tracking.store import ensure_reachable


def train(args: argparse.Namespace, cfg: RunConfig) -> int:
    ensure_reachable()
    prepared = prepare_run(cfg)
    done = run_tracked(prepared, entry_point="train")
    fit = done.outcome.fit
    print(f"run {done.run_id}: test/acc {fit.test['test/acc']:.4f} (best epoch {fit.best_epoch})")
    return 0


def quickstart(args: argparse.Namespace, cfg: RunConfig) -> int:
    """The same run under each freeze policy, as nested children of one parent run."""
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for policy in policies:
        parse_policy(policy)
    ensure_reachable()
    # Every arm is built (and so validated) before the parent run opens or any training starts.
    arms = [prepare_run(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, freeze=p))) for p in policies]
    rows = []
    with tracked_run(f"quickstart · {cfg.model.backbone} · {cfg.data.dataset}", cfg.tracking.experiment_name,
                     tags={"entry_point": "quickstart", "dataset": cfg.data.dataset}) as parent:
        for prepared in arms:
            done = run_tracked(prepared, entry_point="quickstart", parent_run_id=parent.info.run_id, attach=False)
            rows.append(summary.arm_row(prepared, done.run_id, done.outcome))
        summary.log_quickstart(rows)
    print(summary.markdown_table(rows))
    return 0


COMMANDS = {"train": train, "quickstart": quickstart}

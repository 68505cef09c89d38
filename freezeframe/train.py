"""`train` and `pretrain`: one tracked run; pretrain also registers the model for later transfer."""

from __future__ import annotations

import argparse

from freezeframe.single_run import prepare_run, run_tracked
from pipelines.config import RunConfig, with_overrides
from tracking import links
from tracking.models.registry import register_run_model
from tracking.store import ensure_reachable


def train(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    ensure_reachable()
    done = run_tracked(prepare_run(cfg), entry_point="train")
    fit = done.outcome.fit
    print(f"run {done.run_id}: test/acc {fit.test['test/acc']:.4f} (best epoch {fit.best_epoch})")
    print(links.format_links(links.run_links(done.run_id)))
    return 0


def pretrain(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Train on a source dataset and register the model, so `weights=models:/<name>@<alias>` can start
    another backbone's transfer run with no network."""
    cfg = with_overrides(cfg, {"tracking.log_model": True})
    ensure_reachable()
    done = run_tracked(prepare_run(cfg), entry_point="pretrain")
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

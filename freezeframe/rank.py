"""`rank`: order an experiment's backbones by their frozen features, before any fine-tuning.

Each distinct backbone (with its weights) of the experiment's compare: grid gets one `linear_probe`
arm: one feature-extraction pass (through the feature cache: with `data.feature_cache: disk`, a later
comparison's frozen and linear_probe arms read it back), the converged probe, and the features'
scores (pipelines/ranking): LogME, a k-NN vote on validation, the probe's validation accuracy. The arms
run as a comparison does (a study, any number of workers, a rerun skips finished arms) under the parent
run `rank · <compare.name>-rank`, which gets rank/ranking.md and .csv and plots/ranking.png.
"""

from __future__ import annotations

import argparse

from freezeframe.compare import run_arms
from pipelines.config import RunConfig, with_overrides
from pipelines.ranking import SCORES
from pipelines.reports.ranking import ranking_markdown
from pipelines.studies.arms import Comparison, parse_comparison
from tracking.studies import ranking_report

SUFFIX = "-rank"  # its own study beside the comparison's (a study has one kind)


def ranking_grid(spec: Comparison, cfg: RunConfig, source: str) -> Comparison:
    """One linear_probe arm per distinct backbone of the comparison, with the run's seed. Features as a
    frozen backbone gives them: no augmentation, BatchNorm in eval (the probe refuses either otherwise)."""
    backbones = dict.fromkeys((arm.backbone, arm.weights) for arm in spec.arms)
    base = with_overrides(cfg, {"data.augment": False, "model.bn": "frozen"})
    arms = [{"backbone": b, "weights": w, "freeze": "linear_probe", "seed": cfg.seed} for b, w in backbones]
    return parse_comparison({"name": spec.name + SUFFIX, "arms": arms}, base, source)


def rank(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    grid = ranking_grid(parse_comparison(sections.get("compare"), cfg, source=args.experiment), cfg, args.experiment)
    name = args.study_name or grid.name

    def summarise(parent_run_id: str, runs: list) -> str:
        rows = ranking_report.log_ranking(parent_run_id, name, runs, args.by)
        return ranking_markdown(rows, args.by)

    # each backbone's value in the study (and optuna-dashboard) is the score it is ranked by
    run_arms(args, grid.configs[0], grid, name, summarise, kind="rank", order_by=SCORES[args.by],
             value=lambda outcome: outcome.fit.extra[SCORES[args.by]])
    return 0

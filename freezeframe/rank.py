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
import time

from optuna.trial import TrialState

from freezeframe.study_run import Grid, arm_runs, on_dead_trial, run_arms
from pipelines.config import RunConfig, with_overrides
from pipelines.ranking import SCORES
from pipelines.reports.ranking import ranking_markdown, ranking_rows
from pipelines.studies.arms import Comparison, parse_comparison
from pipelines.studies.storage import study_lock
from pipelines.studies.worker import reap_dead
from tracking import tags
from tracking.studies import ranking_report

SUFFIX = "-rank"  # its own study beside the comparison's (a study has one kind)
POLL_S = 2.0  # how often a screening worker looks whether other workers' ranking arms have ended


def ranking_grid(spec: Comparison, cfg: RunConfig, name: str, source: str) -> Comparison:
    """One linear_probe arm per distinct backbone of the comparison, with the run's seed if the grid has
    it, else the grid's first: the comparison's own linear_probe arm of that seed is then this very arm,
    and a screened comparison reuses its run. Features as a frozen backbone gives them: no augmentation,
    BatchNorm in eval (the probe refuses either otherwise)."""
    base = with_overrides(cfg, {"data.augment": False, "model.bn": "frozen"})
    seeds = [arm.seed for arm in spec.arms]
    seed = cfg.seed if cfg.seed in seeds else seeds[0]
    arms = [{"backbone": b, "weights": w, "freeze": "linear_probe", "seed": seed} for b, w in spec.backbones()]
    return parse_comparison({"name": name, "arms": arms}, base, source)


def run_ranking(args: argparse.Namespace, spec: Comparison, by: str, wait: bool = False) -> list[dict]:
    """Run the ranking's arms as one of its workers; with `wait` (a screened comparison's first step),
    until every worker's arm has ended (a dead worker's arm, queued again, is run here), and the
    `mlflow run` launcher's run left for the comparison. Returns the ranking's rows, best first, each
    with its run's config digest."""
    name = spec.name

    def summarise(parent_run_id: str, runs: list) -> str:
        return ranking_markdown(ranking_report.log_ranking(parent_run_id, name, runs, by), by)

    def go():  # each backbone's value in the study (and optuna-dashboard) is the score it is ranked by
        return run_arms(args, spec.configs[0], Grid(spec, name, summarise, kind="rank", order_by=SCORES[by],
                                                    value=lambda fit: fit.extra[SCORES[by]], adopt_launcher=not wait))

    run = go()
    while wait:
        with study_lock(run.url, name):  # as run_arms does before queueing
            reap_dead(run.study, run.storage, on_dead_trial)
        states = {t.state for t in run.study.get_trials(deepcopy=False)}
        if TrialState.WAITING in states:
            run = go()
        elif TrialState.RUNNING not in states:
            break
        time.sleep(POLL_S)
    runs = arm_runs(run.parent.run_id, spec)
    return ranking_rows([{**ranking_report.ranking_record(r), "digest": r.data.tags[tags.CONFIG_DIGEST]}
                         for r in runs], by)


def rank(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    spec = parse_comparison(sections.get("compare"), cfg, source=args.experiment)
    run_ranking(args, ranking_grid(spec, cfg, args.study_name or spec.name + SUFFIX, args.experiment), args.by)
    return 0


def screen(args: argparse.Namespace, cfg: RunConfig, spec: Comparison,
           name: str) -> tuple[Comparison, dict[str, str], dict[str, str]]:
    """compare.screen: rank the grid's backbones (waiting for every worker's ranking arm, so that all
    workers keep the same ones), then leave the policies that train the backbone to the best `keep`.
    Returns the screened grid, per backbone screened out why, and the ranking's finished runs by config
    digest (the grid's linear_probe arms of the ranking's seed: run_arms reuses them, training nothing)."""
    by, keep = spec.screen.by, spec.screen.keep
    rows = run_ranking(args, ranking_grid(spec, cfg, name + SUFFIX, args.experiment), by, wait=True)
    placed = [r for r in rows if f"place_{by}" in r]
    kept = {(r["backbone"], r["weights"]) for r in placed[:keep]}
    why = {f"{r['backbone']} ({r['weights']})": f"{by} place {r[f'place_{by}']} of {len(placed)}, keep {keep}"
           for r in placed[keep:]}
    why.update({f"{r['backbone']} ({r['weights']})": f"its ranking arm {r['status']}"
                for r in rows if r not in placed})
    print(f"screened by {by}: fine-tuning {', '.join(f'{b} ({w})' for b, w in spec.backbones() if (b, w) in kept)}"
          + (f"; screened out: {'; '.join(f'{k}: {v}' for k, v in why.items())}" if why else ""), flush=True)
    reuse = {r["digest"]: r["run_id"] for r in rows if r["status"] == "FINISHED"}
    return spec.screened(kept), why, reuse

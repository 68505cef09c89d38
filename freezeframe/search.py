"""`search`: an Optuna study over batch sizes (multiples of 8) and friends; every trial a child run of
the study's parent. Several workers on one storage add their trials to one study."""

from __future__ import annotations

import argparse

import optuna

from freezeframe.study_run import experiment_stem, link_study, open_storage, print_links, run_child, work
from pipelines.config import RunConfig, with_overrides
from pipelines.run import slug
from pipelines.search import EpochReporter, open_search
from pipelines.search_space import SearchSpec, parse_search, suggest, trial_config
from pipelines.studies import storage_id
from pipelines.study_worker import RETRY_ATTR, RUN_ATTR
from tracking import parent_run, study_report
from tracking.store import ensure_reachable

COMPARED_TRIALS = 10


class TrialObjective:
    """suggest → the base config with the trial's choices → the same run function → report each epoch."""

    def __init__(self, spec: SearchSpec, base: RunConfig, parent_run_id: str):
        self.spec, self.base, self.parent_run_id = spec, base, parent_run_id

    def __call__(self, trial: optuna.Trial) -> float:
        choice = suggest(trial, self.spec)
        # each trial its own checkpoint folder (two trials may draw the same params, in two workers at
        # once); a retried trial reuses the folder of the trial it retries, and resumes from it
        origin = trial.user_attrs.get(RETRY_ATTR)
        folder = f"{self.base.train.checkpoint_dir}/{slug(self.spec.study_name)}/trial-{origin or trial.number}"
        cfg = with_overrides(trial_config(self.base, self.spec, choice), {
            "tracking.run_name": f"trial {trial.number} · bs {choice['batch_size']}",
            "train.checkpoint_dir": folder, "train.resume": origin is not None})
        done = run_child(cfg, trial, self.parent_run_id, "search", {},
                         (EpochReporter(trial, self.spec.metric),))
        return done.outcome.fit.best_value


def search(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    overrides = {k: getattr(args, k) for k in ("n_trials", "timeout", "study_name", "sampler", "pruner", "seed")}
    spec = parse_search(sections.get("search"), cfg, overrides, source=args.experiment)
    ensure_reachable()
    url, storage = open_storage(args.storage)
    study = open_search(spec, url, storage, cfg.train.epochs)
    params = {"search.storage": storage_id(url), "search.sampler": spec.sampler, "search.pruner": spec.pruner,
              "search.metric": spec.metric,
              "search.batch_sizes": f"{spec.batch_sizes[0]}..{spec.batch_sizes[-1]} step 8"}
    parent = parent_run.open_parent("search", spec.study_name, storage_id(url), cfg.tracking.experiment_name,
                                    {"optuna.direction": spec.direction}, params)
    link_study(study, parent)

    def report(parent_run_id: str) -> str | None:
        return study_report.log_study(study, parent_run_id, spec.metric, experiment_stem(args.experiment))

    champion = work(url, storage, study, parent, TrialObjective(spec, cfg, parent.run_id), report, propose=True,
                    n_trials=spec.n_trials, timeout=spec.timeout)
    print(f"study {spec.study_name}: {len(study.trials)} trials in {url}; parent run {parent.run_id}")
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        best = study.best_trial
        print(f"best: trial {best.number} {best.params} → {spec.metric} {best.value:.4f}; champion {champion}")
    print_links(parent, best_run_ids(study), "trials", spec.metric,
                ascending=study.direction == optuna.study.StudyDirection.MINIMIZE)
    return 0


def best_run_ids(study: optuna.Study, limit: int = COMPARED_TRIALS) -> list[str]:
    """The complete trials' runs, best first: the compare view is readable up to about ten."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get(RUN_ATTR)]
    complete.sort(key=lambda t: t.value, reverse=study.direction == optuna.study.StudyDirection.MAXIMIZE)
    return [t.user_attrs[RUN_ATTR] for t in complete[:limit]]

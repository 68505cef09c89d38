"""`search`: an Optuna study over batch sizes (multiples of 8) and friends; every trial a child run of
the study's parent. Several workers on one storage add their trials to one study."""

from __future__ import annotations

import argparse
from typing import Any

import optuna
from optuna.storages import BaseStorage

from freezeframe.child_run import run_child
from freezeframe.study_run import StudyRun, experiment_stem, open_study_run, print_links, reuse_run, work
from pipelines.config import RunConfig, with_overrides
from pipelines.errors import without_password
from pipelines.state import slug
from pipelines.studies.child import Reporting
from pipelines.studies.keys import RETRY_ATTR, RUN_ATTR, TWIN_ATTR
from pipelines.studies.plan import PrunerSpec, StudyPlan
from pipelines.studies.search_space import SearchSpec, parse_search, suggest, trial_config
from pipelines.studies.search_study import (
    batch_size_ceiling,
    champion_trial,
    finished_twin,
    make_sampler,
    objective_values,
)
from pipelines.studies.worker import TrialBudget
from tracking import tags
from tracking.studies import search_report

COMPARED_TRIALS = 10


class TrialObjective:
    """suggest → the base config with the trial's choices → the same child run as an arm → report each
    epoch; params a finished trial already had → its result, without training."""

    def __init__(self, run: StudyRun, spec: SearchSpec, base: RunConfig):
        self.run, self.spec, self.base = run, spec, base

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        choice = suggest(trial, self.spec)
        name = f"trial {trial.number} · bs {choice['batch_size']}"
        twin = finished_twin(trial.study, trial)
        if twin is not None and twin.user_attrs.get(RUN_ATTR):
            run_id = reuse_run(trial, self.run.parent.run_id, twin.user_attrs[RUN_ATTR], name)
            trial.set_user_attr(TWIN_ATTR, twin.number)
            print(f"trial {trial.number} {trial.params}: as trial {twin.number}, reused (run {run_id})", flush=True)
            return self._value(twin.values)
        # each trial its own checkpoint folder (two trials may draw the same params, in two workers at
        # once); a retried trial reuses the folder of the trial it retries, and resumes from it
        origin = trial.user_attrs.get(RETRY_ATTR)
        folder = f"{self.base.train.checkpoint_dir}/{slug(self.spec.study_name)}/trial-{origin or trial.number}"
        cfg = with_overrides(trial_config(self.base, self.spec, choice), {
            "tracking.run_name": name, "train.checkpoint_dir": folder, "train.resume": origin is not None})
        fit = run_child(self.run.child(trial, cfg, Reporting(self.spec.metric)), trial)
        return self._value(objective_values(self.spec, fit))

    def _value(self, values: list[float]) -> float | list[float]:
        return list(values) if self.spec.multi_objective else values[0]


def search(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    overrides = {k: getattr(args, k) for k in ("n_trials", "max_trials", "timeout", "study_name", "sampler",
                                                "pruner", "seed")}
    spec = parse_search(sections.get("search"), cfg, overrides, source=args.experiment)
    declared, cut = spec.batch_sizes, {}
    plan = StudyPlan("search", spec.study_name, args.storage, cfg.tracking.experiment_name, spec.directions,
                     spec.objectives, PrunerSpec("search", spec.pruner, cfg.train.epochs), sampler=make_sampler(spec),
                     parent_tags={tags.OPTUNA_DIRECTION: ",".join(spec.directions)},
                     parent_params={"search.sampler": spec.sampler,
                                    "search.pruner": f"none ({spec.pruner_note})" if spec.pruner_note else spec.pruner,
                                    "search.metric": spec.metric, "search.objectives": ",".join(spec.objectives),
                                    "search.max_trials": spec.max_trials or "none",
                                    "search.batch_sizes": f"{declared[0]}..{declared[-1]} step 8"})

    def fit_memory(study: optuna.Study, storage: BaseStorage, url: str) -> dict[str, Any]:
        """The space cut to the memory ceiling (a smallest batch that does not fit is refused here)."""
        cut["spec"], cut["ceilings"] = batch_size_ceiling(study, storage, url, spec, cfg)
        study.sampler = make_sampler(cut["spec"])  # the grid sampler's grid is the space as cut
        return {"search.batch_size_ceiling": cut["spec"].batch_sizes[-1] if cut["ceilings"] else "not probed"}

    run = open_study_run(plan, before_parent=fit_memory)
    spec, ceilings = cut["spec"], cut["ceilings"]
    if spec.batch_sizes != declared:
        print(f"search: batch sizes cut to {spec.batch_sizes[0]}..{spec.batch_sizes[-1]} (the memory ceiling on "
              f"{ceilings[0].device}); {', '.join(map(str, declared[len(spec.batch_sizes):]))} do not fit", flush=True)
    if spec.pruner_note:
        print(f"search: pruner {spec.pruner_note}", flush=True)
    if ceilings:
        search_report.log_ceilings(run.parent.run_id, ceilings)

    def report(parent_run_id: str) -> str | None:
        return search_report.log_study(run.study, parent_run_id, spec.objectives, experiment_stem(args.experiment))

    champion = work(run, TrialObjective(run, spec, cfg), report,
                    TrialBudget(propose=True, n_trials=spec.n_trials, timeout=spec.timeout, max_trials=spec.max_trials),
                    getattr(args, "launcher", None))
    study = run.study
    print(f"study {spec.study_name}: {len(study.trials)} trials in {without_password(run.url)}; "
          f"parent run {run.parent.run_id}")
    best = champion_trial(study)
    if best is not None:
        values = ", ".join(f"{m} {v:.4f}" for m, v in zip(spec.objectives, best.values, strict=True))
        print(f"best: trial {best.number} {best.params} → {values}; champion {champion}")
    print_links(run.parent, best_run_ids(study), "trials", spec.metric,
                ascending=study.directions[0] == optuna.study.StudyDirection.MINIMIZE)
    return 0


def best_run_ids(study: optuna.Study, limit: int = COMPARED_TRIALS) -> list[str]:
    """The complete trials' runs, best first on the first objective: the compare view is readable up to about ten."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.user_attrs.get(RUN_ATTR)]
    complete.sort(key=lambda t: t.values[0], reverse=study.directions[0] == optuna.study.StudyDirection.MAXIMIZE)
    return [t.user_attrs[RUN_ATTR] for t in complete[:limit]]

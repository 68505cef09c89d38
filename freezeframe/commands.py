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
from pipelines.errors import first_line
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
                print(f"[{index}/{len(arms)}] {arm.name} FAILED: {first_line(exc)}",
                      file=sys.stderr)
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()  # an out-of-memory arm must not starve the next one
        rows, best = comparison_report.log_summary(parent_id, spec.name, comparison.arm_runs(parent_id))
        champion = _register_best_arm(best, _experiment_stem(args.experiment), parent_id) if best else None
    print(comparison_report.markdown(rows, []))
    if champion:
        print(f"best arm registered as {champion}")
    return 0


def _experiment_stem(path: str) -> str:
    return path.rsplit("/", 1)[-1].removesuffix(".yaml")


def _register_best_arm(best: dict, experiment: str, parent_id: str) -> str | None:
    """The best arm's model as `freezeframe-<experiment>@champion`, unless that arm logged none."""
    from tracking.store import TrackingError

    arm = f"{best['backbone']} · {best['freeze']} · seed {best['seed']}"
    try:
        return register_run_model(best["run_id"], f"freezeframe-{experiment}", "champion",
                                  f"best arm of comparison {experiment}: {arm}, test/acc {best['test_acc']:.4f}; "
                                  f"run {best['run_id']}", tag_run_id=parent_id)
    except TrackingError:
        return None


def predict(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Top-k classes for an image or a folder, from a registered or logged model."""
    import csv

    from pipelines.errors import ConfigError
    from pipelines.predict import image_paths
    from pipelines.predict import predict as classify
    from tracking.model_store import load_for_inference

    if not args.input:
        raise ConfigError("predict needs --input (-P input=...): an image file or a folder of images")
    if args.top_k < 1:
        raise ConfigError(f"--top_k must be >= 1, got {args.top_k}")
    paths = image_paths(args.input)  # bad input fails before the (slower) model load
    model, metadata = load_for_inference(args.model)
    predictions = classify(model, metadata, paths, top_k=args.top_k)
    for p in predictions:
        print(f"{p.path}: " + ", ".join(f"{name} {prob:.3f}" for name, prob in p.top))
    if len(predictions) > 1 or args.output:
        output = args.output or "predictions.csv"
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(len(predictions[0].top))
                                       for kind in ("class", "prob")]])
            for p in predictions:
                writer.writerow([p.path, *[v for name, prob in p.top for v in (name, f"{prob:.6f}")]])
        print(f"wrote {output} ({len(predictions)} images)")
    return 0


COMMANDS = {"train": train, "pretrain": pretrain, "compare": compare, "predict": predict}


def search(args: argparse.Namespace, cfg: RunConfig, sections: dict) -> int:
    """Optuna over batch sizes (multiples of 8) and friends; every trial a child run of the study's parent."""
    import optuna

    from pipelines.run import slug
    from pipelines.search import PruningReporter, make_storage, open_study
    from pipelines.search_space import parse_search, suggest, trial_config
    from tracking import study_report, study_runs

    overrides = {k: getattr(args, k) for k in ("n_trials", "timeout", "study_name", "sampler", "pruner", "seed")}
    spec = parse_search(sections.get("search"), cfg, overrides, source=args.experiment)
    ensure_reachable()
    storage_url = args.storage or "sqlite:///optuna.db"
    study = open_study(spec, make_storage(storage_url, on_stale=study_runs.close_stale_trial), cfg.train.epochs)
    params = {"search.storage": _storage_id(storage_url), "search.sampler": spec.sampler,
              "search.pruner": spec.pruner, "search.metric": spec.metric,
              "search.batch_sizes": f"{spec.batch_sizes[0]}..{spec.batch_sizes[-1]} step 8"}
    parent = study_runs.study_parent(study, _storage_id(storage_url), cfg.tracking.experiment_name, params)
    experiment = _experiment_stem(args.experiment)

    def objective(trial: optuna.Trial) -> float:
        choice = suggest(trial, spec)
        trial_cfg = trial_config(cfg, spec, choice)
        name = f"trial {trial.number} · bs {choice['batch_size']}"
        # each trial its own checkpoint folder: two trials may draw the same params, in two workers at once
        folder = f"{trial_cfg.train.checkpoint_dir}/{slug(spec.study_name)}/trial-{trial.number}"
        trial_cfg = dataclasses.replace(trial_cfg, tracking=dataclasses.replace(trial_cfg.tracking, run_name=name),
                                        train=dataclasses.replace(trial_cfg.train, checkpoint_dir=folder))
        tags = {study_runs.STUDY_TAG: spec.study_name, "optuna.trial": str(trial.number)}
        run_id: list[str] = []

        def started(mlflow_run_id: str) -> None:
            run_id.append(mlflow_run_id)
            trial.set_user_attr("mlflow_run_id", mlflow_run_id)

        try:
            done = run_tracked(trial_cfg, entry_point="search", parent_run_id=parent, attach=False, tags=tags,
                               listeners=(PruningReporter(trial, spec.metric),), on_start=started)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # noqa: BLE001 - out of memory, NaN loss...: this trial fails, the study goes on
            reason = first_line(exc, limit=500)
            trial.set_user_attr("fail_reason", reason)
            study_runs.mark_trial(run_id[0] if run_id else None, "FAIL", reason)
            raise
        finally:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        study_runs.mark_trial(done.run_id, "COMPLETE")
        return done.outcome.fit.best_value

    try:
        study.optimize(objective, n_trials=spec.n_trials, timeout=spec.timeout or None, catch=(Exception,),
                       gc_after_trial=True)
    finally:
        champion = study_report.log_study(study, parent, spec.metric, experiment)
        study_runs.close_parent(parent)
    best = study.best_trial if any(t.state.name == "COMPLETE" for t in study.trials) else None
    print(f"study {spec.study_name}: {len(study.trials)} trials in {storage_url}; parent run {parent}")
    if best is not None:
        print(f"best: trial {best.number} {best.params} → {spec.metric} {best.value:.4f}; champion {champion}")
    return 0


def _storage_id(url: str) -> str:
    """Which storage a study lives in, without credentials (a parent must not match another storage's study)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    return f"{parsed.scheme}:{parsed.hostname or ''}{parsed.path}" if parsed.scheme else url


COMMANDS["search"] = search

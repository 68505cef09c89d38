"""MLflow's own study storage beside freezeframe's: the same workers and trivial trials through one
loopback `mlflow server` (sqlite backend, `--workers 1`), then what each left in MLflow and Optuna.

- `mlflow.optuna.MlflowStorage`: the study is an MLflow run, each trial a child run; the study is created
  before the clock starts and workers load it (each `create_study` call would make another study run).
- freezeframe: the study in an Optuna storage (a journal file; `--optuna-storage` adds a row for an RDB
  URL), workers through freezeframe.study_run.work, each trial a child run opened the way run_child opens
  it (one metric, no training); workers import the product and elect the parent inside the clock.

One process per worker (one torch thread), all started at once; Optuna's default sampler (TPE) for both.

    .venv/bin/python benchmarks/bench_study_storage.py            # 4 workers × 20 trials
    .venv/bin/python benchmarks/bench_study_storage.py --quick --optuna-storage postgresql+psycopg2://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
import wsgiref.util
from collections import Counter
from pathlib import Path

import optuna
from mlflow.entities import Metric, Param, ViewType
from mlflow.optuna.storage import MlflowStorage
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.conftest import serving_mlflow  # noqa: E402 - the suite's `mlflow server`, started one way

METRIC = "bench/value"
MIRRORED = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED", "RUNNING": "RUNNING", "WAITING": "SCHEDULED"}


def trivial(trial: optuna.Trial) -> float:
    return 1 - abs(trial.suggest_int("batch_size", 8, 256, step=8) - 96) / 256


def mlflow_worker(args) -> None:
    storage = MlflowStorage(experiment_id=args.experiment_id)
    study = optuna.load_study(study_name=args.study, storage=storage)
    print(f"READY {time.time() - args.t0:.2f}", flush=True)  # launch to first trial: imports, study opened
    study.optimize(trivial, n_trials=args.trials)
    storage.flush_all_batches()


def freezeframe_worker(args) -> None:
    """freezeframe's study engine end to end, the child run opened as run_child does, minus the training."""
    from freezeframe.study_run import open_study_run, work
    from pipelines.studies.keys import RUN_ATTR
    from pipelines.studies.plan import PrunerSpec, StudyPlan
    from pipelines.studies.worker import TrialBudget
    from tracking import tags
    from tracking.runs import session
    from tracking.studies import parent_run

    run = open_study_run(StudyPlan("search", args.study, args.storage, args.experiment, ("maximize",), (METRIC,),
                                   PrunerSpec("search", "none"), parent_tags={"optuna.direction": "maximize"}))
    study, parent = run.study, run.parent

    def objective(trial: optuna.Trial) -> float:
        value = trivial(trial)
        parent_run.reopen(parent.run_id)
        with session.open_run(f"trial {trial.number} · bs {trial.params['batch_size']}", args.experiment,
                              tags={tags.STUDY: args.study, tags.TRIAL: str(trial.number)},
                              parent_run_id=parent.run_id, attach=False) as child:
            trial.set_user_attr(RUN_ATTR, child.info.run_id)
            MlflowClient().log_batch(child.info.run_id, metrics=[Metric(METRIC, value, int(time.time() * 1000), 0)],
                                     params=[Param("batch_size", str(trial.params["batch_size"]))])
        return value

    def report(parent_run_id: str) -> None:  # log_study's numbers: no plots, and no model to register
        parent_run.log_values(parent_run_id, {f"best/{METRIC}": study.best_value}, {})

    print(f"READY {time.time() - args.t0:.2f}", flush=True)  # and the parent elected
    work(run, objective, report, TrialBudget(propose=True, n_trials=args.trials))


def run_workers(server: str, args, worker_args: list[str]) -> tuple[float, float, int]:
    """Seconds from the first start to the last exit, the slowest worker's start-up, how many failed."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": server, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_DISABLE_TELEMETRY": "true", "TQDM_DISABLE": "1"}
    command = [sys.executable, __file__, "--trials", str(args.trials), "--t0", str(time.time()), *worker_args]
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(args.workers)]
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - start
    failed = [out[-1500:] for p, out in zip(procs, outputs, strict=True) if p.returncode != 0]
    for out in failed:
        print(f"--- a worker failed:\n{out}", file=sys.stderr)
    starts = [float(line.split()[1]) for out in outputs for line in out.splitlines() if line.startswith("READY ")]
    return seconds, max(starts, default=float("nan")), len(failed)


def dashboard_opens(storage, study_name: str, study_id) -> str:
    """optuna-dashboard's own app over the storage (what `optuna_dashboard.run_server(storage)` serves):
    its study list, then the study's page data."""
    import optuna_dashboard

    app, errors = optuna_dashboard.wsgi(storage), []
    logging.getLogger("optuna_dashboard").addHandler(handler := logging.Handler())
    handler.emit = lambda record: errors.append(record.getMessage().splitlines()[0])
    logging.getLogger("optuna_dashboard").propagate = False

    def get(path: str, query: str = "") -> tuple[str, bytes]:
        environ = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": "GET"}
        wsgiref.util.setup_testing_defaults(environ)
        status: list[str] = []
        body = b"".join(app(environ, lambda s, h, exc_info=None: status.append(s)))
        return status[0].split()[0], body

    listed, body = get("/api/studies")
    found = listed == "200" and study_name in {s["study_name"] for s in json.loads(body)["study_summaries"]}
    page, body = get(f"/api/studies/{study_id}", "after=0")
    if found and page == "200":
        return f"yes ({len(json.loads(body)['trials'])} trials)"
    why = f" ({errors[0]})" if errors else ""
    return f"no: study list {listed}{why}, study page {page}"


def row(name: str, timing: tuple[float, float, int], experiment_id: str, storage, study_name: str,
        run_id_of) -> str:
    """One table row, read back from Optuna and the tracking server; `run_id_of(trial)` is its run's id."""
    seconds, startup, failed = timing
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.trials
    client = MlflowClient()
    run_of = {t.number: client.get_run(run_id_of(t)) if run_id_of(t) else None for t in trials}
    runs = client.search_runs([experiment_id], run_view_type=ViewType.ALL, max_results=5000)
    trial_runs = {r.info.run_id for r in run_of.values() if r is not None}
    other = Counter(("deleted" if r.info.lifecycle_stage == "deleted" else r.info.status)
                    for r in runs if r.info.run_id not in trial_runs)
    states = Counter(t.state.name for t in trials)
    mirrored = sum(run_of[t.number] is not None and run_of[t.number].info.status == MIRRORED[t.state.name]
                   for t in trials)
    return (f"| {name} | {seconds:.1f} | {startup:.1f} | {failed} | {len(trials)}: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(states.items()))} | {len({t.number for t in trials})} | "
            f"{len(runs)} | {len(trial_runs)} | {sum(other.values())}: "
            f"{', '.join(f'{k} {v}' for k, v in sorted(other.items()))} | {mirrored}/{len(trials)} | "
            f"{dashboard_opens(storage, study_name, storage.get_study_id_from_name(study_name))} |")


def bench_mlflow_storage(server: str, args) -> str:
    study_name = f"bench-{uuid.uuid4().hex[:8]}"
    experiment_id = MlflowClient().create_experiment(f"mlflow-storage-{study_name}")
    optuna.create_study(study_name=study_name, storage=MlflowStorage(experiment_id=experiment_id), direction="maximize")
    timing = run_workers(server, args, ["--worker", "mlflow", "--study", study_name, "--experiment-id", experiment_id])
    return row("mlflow.optuna.MlflowStorage", timing, experiment_id, MlflowStorage(experiment_id=experiment_id),
               study_name, lambda t: t._trial_id)  # a trial's id is its run's id


def bench_freezeframe(server: str, args, url: str, label: str) -> str:
    from pipelines.studies.keys import RUN_ATTR
    from pipelines.studies.storage import make_storage

    study_name = f"bench-{uuid.uuid4().hex[:8]}"
    experiment = f"freezeframe-{study_name}"
    # Optuna's tables made once first, as MlflowStorage's study is: workers starting together on an empty
    # PostgreSQL database race in RDBStorage's CREATE TABLEs (UniqueViolation on pg_type) and one fails
    storage = make_storage(url)
    timing = run_workers(server, args, ["--worker", "freezeframe", "--study", study_name, "--experiment", experiment,
                                        "--storage", url])
    return row(f"freezeframe ({label})", timing, MlflowClient().get_experiment_by_name(experiment).experiment_id,
               storage, study_name, lambda t: t.user_attrs.get(RUN_ATTR))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=20, help="trials per worker")
    parser.add_argument("--optuna-storage", default="", help="an RDB URL for an extra freezeframe row")
    parser.add_argument("--quick", action="store_true", help="2 workers × 3 trials")
    parser.add_argument("--worker", choices=("mlflow", "freezeframe"), help=argparse.SUPPRESS)
    for hidden in ("--study", "--experiment", "--experiment-id", "--storage"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.worker:
        (mlflow_worker if args.worker == "mlflow" else freezeframe_worker)(args)
        return
    if args.quick:
        args.workers, args.trials = 2, 3
    with tempfile.TemporaryDirectory() as tmp, serving_mlflow(Path(tmp), seconds=180) as server:
        os.environ["MLFLOW_TRACKING_URI"] = server
        results = [bench_mlflow_storage(server, args),
                   bench_freezeframe(server, args, f"journal:{tmp}/optuna.journal", "journal file")]
        if args.optuna_storage:
            results.append(bench_freezeframe(server, args, args.optuna_storage, args.optuna_storage.split(":")[0]))
    print(f"\n{args.workers} workers × {args.trials} trivial trials, one `mlflow server` (sqlite, 1 worker)\n\n"
          "| storage | wall s | slowest start-up s | workers failed | trials by state | distinct numbers | MLflow runs "
          "| trial runs | other runs | run state mirrors trial | optuna-dashboard |\n" + "|---" * 11 + "|")
    print("\n".join(results))


if __name__ == "__main__":
    main()

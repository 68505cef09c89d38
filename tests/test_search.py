"""Optuna searches: the space, the study and its MLflow mirror, in-process on real sqlite storages."""

import threading
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.studies.search_space import parse_search, suggest, trial_config
from pipelines.studies.storage import StorageError, make_storage
from tests.conftest import runs_in, tiny_experiment


def spec_of(section, **overrides):
    return parse_search(section, load_config(None, {"train.epochs": 2}), overrides)


@pytest.mark.parametrize("section, message", [
    ({"batch_size": {"low": 12, "high": 64}}, "low = 12 is not a positive multiple of 8"),
    ({"batch_size": {"low": 8, "high": 60}}, "high = 60 is not a positive multiple of 8"),
    ({"batch_size": {"low": 64, "high": 8}}, "low 64 > high 8"),
    ({"batch_size": {"low": 0, "high": 8}}, "low = 0 is not a positive multiple"),
    ({"batch_size": {"low": 8, "high": 16}, "n_trials": 0}, "n_trials must be > 0"),
    ({"batch_size": {"low": 8, "high": 16}, "sampler": "cmaes"}, "unknown sampler 'cmaes'"),
    ({"batch_size": {"low": 8, "high": 16}, "pruner": "patient"}, "unknown pruner 'patient'"),
    ({"batch_size": {"low": 8, "high": 16}, "sampler": "grid", "lr": {"low": 0.001, "high": 0.01}},
     "grid sampler needs discrete values"),
    ({"batch_size": {"low": 8, "high": 16}, "batch": 3}, "unknown key 'search.batch'"),
    ({"batch_size": [8, 16]}, "needs {low, high}"),
    ({"batch_size": {"low": 8, "high": 16}, "freeze": ["frozen", "layer_decay:1"]}, "'layer_decay:1'"),
])
def test_bad_search_sections(section, message):
    with pytest.raises(ConfigError, match=message):
        spec_of(section)


def test_every_suggested_batch_size_is_a_multiple_of_8():
    spec = spec_of({"batch_size": {"low": 8, "high": 128}, "lr": {"low": 1e-4, "high": 1e-1}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: suggest(t, spec)["batch_size"], n_trials=60)
    sizes = {t.params["batch_size"] for t in study.trials}
    assert all(b % 8 == 0 and 8 <= b <= 128 for b in sizes) and len(sizes) > 5


def test_layer_decay_is_a_freeze_categorical():
    spec = spec_of({"batch_size": {"low": 8, "high": 16}, "freeze": ["frozen", "layer_decay:0.7"]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: suggest(t, spec)["batch_size"], n_trials=12)
    chosen = {t.params["freeze"] for t in study.trials}
    assert chosen == {"frozen", "layer_decay:0.7"}
    config = trial_config(load_config(None), spec, {"batch_size": 8, "freeze": "layer_decay:0.7"})
    assert config.model.freeze == "layer_decay:0.7"


def test_linear_scaling_rule():
    spec = spec_of({"batch_size": {"low": 8, "high": 64}, "linear_scaling": {"base_batch_size": 32}})
    base = load_config(None, {"train.lr": 0.004})
    assert trial_config(base, spec, {"batch_size": 64}).train.lr == pytest.approx(0.008)
    assert trial_config(base, spec, {"batch_size": 8}).train.lr == pytest.approx(0.001)


def test_unreachable_and_malformed_storages_fail_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(StorageError, match="unreachable"):
        make_storage("postgresql://nobody@127.0.0.1:9/none")
    assert time.perf_counter() - start < 5
    with pytest.raises(StorageError, match="folder .* does not exist"):
        make_storage(f"sqlite:///{tmp_path}/missing/optuna.db")
    with pytest.raises(StorageError, match="is not a URL"):
        make_storage("optuna.db")


def search_experiment(tmp_path, search: str) -> str:
    return str(tiny_experiment(tmp_path, "search:\n" + search))


SPACE = "  study_name: tiny\n  batch_size: {low: 8, high: 32}\n  lr: {low: 0.001, high: 0.05}\n"


@pytest.mark.slow
def test_search_mirrors_every_trial_in_mlflow_and_continues_the_study(tracking_store, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    path = search_experiment(tmp_path, SPACE + "  pruner: none\n")
    assert main(["search", "--experiment", path, "--storage", storage, "--n_trials", "3"]) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 3 and all(t.params["batch_size"] % 8 == 0 for t in study.trials)
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_id: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert len(children) == 3
    for trial in study.trials:
        run = children[trial.user_attrs["mlflow_run_id"]]
        assert run.info.run_name == f"trial {trial.number} · bs {trial.params['batch_size']}"
        assert run.data.tags["optuna.trial"] == str(trial.number) and run.data.tags["optuna.study"] == "tiny"
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.params["train.batch_size"] == str(trial.params["batch_size"])
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
    assert parent.data.tags["best_run_id"] == study.best_trial.user_attrs["mlflow_run_id"]
    assert parent.data.metrics["best/val/acc"] == study.best_value
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "optuna")}
    assert {"optuna/optimization_history.png", "optuna/intermediate_values.png"} <= artifacts
    # a second invocation continues the same study under the same parent
    assert main(["search", "--experiment", path, "--storage", storage, "--n_trials", "2"]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=storage).trials) == 5
    runs = runs_in(tracking_store)
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1
    assert {r.info.status for r in runs} == {"FINISHED"}
    # each trial's system-metrics monitor ended with it; the parent, which only waits, has none
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
    assert not [k for k in parent.data.metrics if k.startswith("system/")]


def test_pruned_trials_end_killed_and_tagged(tracking_store, tmp_path, monkeypatch):
    import pipelines.studies.plan as plan_mod

    monkeypatch.setattr(plan_mod, "pruner_named", lambda name, epochs: optuna.pruners.ThresholdPruner(lower=2.0))
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", search_experiment(tmp_path, SPACE), "--storage", storage,
                 "--n_trials", "2"]) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    children = [r for r in runs_in(tracking_store) if "mlflow.parentRunId" in r.data.tags]
    assert {r.info.status for r in children} == {"KILLED"}
    assert {r.data.tags["optuna.state"] for r in children} == {"PRUNED"}
    assert all("pruned at epoch 1" in r.data.tags["error"] for r in children)
    # what a trial cost is on its run even when it was stopped early
    assert all(r.data.metrics["perf/peak_memory_mb"] > 0 and r.data.metrics["perf/steady_images_per_s"] > 0
               for r in children)
    assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # stopped with the runs


def test_out_of_memory_fails_the_trial_and_the_study_goes_on(tracking_store, tmp_path):
    """Without the ceiling probe (which would refuse this space), the guard fails each trial alone."""
    storage = f"sqlite:///{tmp_path}/optuna.db"
    path = search_experiment(tmp_path, SPACE + "  probe_memory: false\n")
    assert main(["search", "--experiment", path, "--storage", storage, "--n_trials", "2",
                 "--set", "train.memory_limit_mb=1"]) == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert "train.memory_limit_mb 1" in study.trials[0].user_attrs["fail_reason"]
    children = [r for r in runs_in(tracking_store) if "mlflow.parentRunId" in r.data.tags]
    assert {r.info.status for r in children} == {"FAILED"} and len(children) == 2
    assert {r.data.tags["optuna.state"] for r in children} == {"FAIL"}


def test_study_with_another_direction_is_refused(tracking_store, tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/optuna.db"
    optuna.create_study(study_name="tiny", storage=storage, direction="minimize")
    assert main(["search", "--experiment", search_experiment(tmp_path, SPACE), "--storage", storage]) == 2
    assert "study 'tiny' exists and minimizes" in capsys.readouterr().err
    assert runs_in(tracking_store) == []


@pytest.mark.parametrize("flags, message", [
    (["--n_trials", "0"], "n_trials must be > 0"),
    (["--sampler", "bayes"], "unknown sampler 'bayes'"),
    (["--pruner", "early"], "unknown pruner 'early'"),
    (["--storage", "postgresql://x@127.0.0.1:9/none"], "is unreachable"),
])
def test_bad_search_input_one_line_no_trial(tracking_store, tmp_path, capsys, flags, message):
    assert main(["search", "--experiment", search_experiment(tmp_path, SPACE), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err.split("freezeframe: error:")[-1]
    assert runs_in(tracking_store) == []


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # study.ask() here stands in for a worker
def test_a_silent_trial_on_another_machine_is_failed_by_the_heartbeat_and_queued_again(tmp_path, monkeypatch):
    """No owner record can tell about another machine's worker: Optuna's RDB heartbeat does."""
    import pipelines.studies.storage as studies
    from pipelines.studies.worker import reap_dead, requeue

    monkeypatch.setattr(studies, "HEARTBEAT_S", 1)
    monkeypatch.setattr(studies, "GRACE_S", 2)
    seen = []

    def on_dead(study, trial):
        seen.append(trial.number)
        requeue(study, trial)

    storage = studies.make_storage(f"sqlite:///{tmp_path}/optuna.db", on_dead_trial=on_dead)
    study = optuna.create_study(study_name="far", storage=storage)
    trial = study.ask({"batch_size": optuna.distributions.IntDistribution(8, 64, step=8)})
    trial.set_user_attr("worker", {"host": "another-machine", "pid": 1})
    study_id = storage.get_study_id_from_name("far")
    storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    reap_dead(study, storage, on_dead)
    assert [t.state.name for t in study.trials] == ["RUNNING"]  # alive as far as anyone here can tell
    time.sleep(3)  # past the grace period: its worker is silent
    reap_dead(study, storage, on_dead)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"] and seen == [0]
    assert study.trials[1].params == trial.params


def test_the_worker_loop_runs_a_grid_once_without_optunas_study_stop():
    """Optuna's GridSampler calls Study.stop() once its grid is taken, which raises outside Study.optimize;
    StudyWorker replaces that loop, so it runs WorkerGridSampler (the same grid, no stop) and asks
    is_exhausted() after each trial itself. The first half fails loudly if Optuna's own sampler stops doing
    that: then the adapter in pipelines/studies/worker.py can go."""
    from pipelines.studies.worker import StudyWorker, TrialBudget, WorkerGridSampler

    space = {"x": [1, 2, 3]}
    plain = optuna.create_study(sampler=optuna.samplers.GridSampler(space, seed=0))
    with pytest.raises(RuntimeError, match="Study.stop"):
        for _ in range(3):
            trial = plain.ask()
            plain.tell(trial, trial.suggest_categorical("x", space["x"]))

    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, sampler=WorkerGridSampler(space, seed=0))
    told = []
    worker = StudyWorker(study, storage, lambda t: t.suggest_categorical("x", space["x"]),
                         on_told=told.append, on_dead=lambda s, t: None, budget=TrialBudget(propose=True))
    assert worker.run() == 3
    assert sorted(t.params["x"] for t in told) == [1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in told)

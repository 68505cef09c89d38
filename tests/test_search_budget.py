"""A search that knows the hardware and spends compute on new points: the memory ceiling probed before
the study, throughput and peak memory per trial, accuracy vs speed as a Pareto front, no params
trained twice, and a study-wide trial cap across workers. Real sqlite and journal storages, a real
MLflow store, real models and the real CPU memory guard."""

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from pipelines.studies.search_study import ceilings_in
from pipelines.training.device import in_use_mb
from tests.conftest import runs_in, tiny_experiment


def children_of(tracking_store):
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    return parent, [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.mark.slow
def test_the_memory_ceiling_cuts_the_space_and_every_trial_fits(tracking_store, tmp_path, capsys):
    """A guard well inside the space: test_resnet at 128 px needs ~+50 MB at batch 8 and ~+580 MB at 128."""
    limit = int(in_use_mb(torch.device("cpu"))) + 450
    path = tiny_experiment(tmp_path, "search:\n  study_name: ceiling\n  batch_size: {low: 8, high: 256}\n"
                                     "  pruner: none\n  sampler: random\n",
                           **{"data.image_size": 128, "data.max_samples": 24, "train.epochs": 1,
                              "train.memory_limit_mb": limit})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", str(path), "--storage", storage, "--n_trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "search: batch-size ceiling of timm/test_resnet · unfrozen on cpu:" in out
    study = optuna.load_study(study_name="ceiling", storage=storage)
    (probe,) = ceilings_in(study, study._storage).values()
    assert not [k for k in study.user_attrs if "ceiling" in k]  # optuna-dashboard's attribute list stays the links
    ceiling = probe["ceiling"]
    assert 8 <= ceiling < 256 and ceiling % 8 == 0
    assert f"search: batch sizes cut to 8..{ceiling}" in out and f"{ceiling + 8}," in out
    verdicts = {p["batch_size"]: p["fits"] for p in probe["probes"]}
    assert verdicts[256] is False and verdicts[ceiling] is True
    assert all(b > ceiling for b, fits in verdicts.items() if not fits)
    # every suggestion within the ceiling, a multiple of 8, and trained without tripping the guard
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(t.params["batch_size"] % 8 == 0 and t.params["batch_size"] <= ceiling for t in study.trials)
    parent, children = children_of(tracking_store)
    assert parent.data.params["search.batch_size_ceiling"] == str(ceiling)
    assert parent.data.params["search.batch_sizes"] == "8..256 step 8"
    table = MlflowClient().download_artifacts(parent.info.run_id, "search/batch_size_ceiling.csv", str(tmp_path))
    assert f",{ceiling}," in open(table).read()
    for run in children:
        assert 0 < run.data.metrics["perf/peak_memory_mb"] <= limit
        assert run.data.metrics["perf/steady_images_per_s"] > 0
    # a rerun reads the probe from the study: the same ceiling, no second probe
    assert main(["search", "--experiment", str(path), "--storage", storage, "--n_trials", "1"]) == 0
    again = optuna.load_study(study_name="ceiling", storage=storage)
    assert list(ceilings_in(again, again._storage).values()) == [probe]
    assert "batch-size ceiling of" not in capsys.readouterr().out


def test_params_of_a_finished_trial_are_not_trained_again(tracking_store, tmp_path):
    """The grid sampler over a space smaller than n_trials: the first run trains both points and stops
    (the grid is done); a rerun's trial draws a point already done and reuses its result."""
    path = tiny_experiment(tmp_path, "search:\n  study_name: twins\n  batch_size: {low: 8, high: 16}\n"
                                     "  sampler: grid\n  pruner: none\n")
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", str(path), "--storage", storage, "--n_trials", "5"]) == 0
    study = optuna.load_study(study_name="twins", storage=storage)
    assert sorted(t.params["batch_size"] for t in study.trials) == [8, 16]  # grid exhausted: stopped at 2
    assert main(["search", "--experiment", str(path), "--storage", storage, "--n_trials", "1"]) == 0
    study = optuna.load_study(study_name="twins", storage=storage)
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    twin = study.trials[2]
    original = study.trials[twin.user_attrs["duplicate_of"]]
    assert original.params == twin.params and original.value == twin.value
    parent, children = children_of(tracking_store)
    runs = {r.info.run_id: r for r in children}
    copy = runs[twin.user_attrs["mlflow_run_id"]]
    assert copy.data.tags["duplicate_of"] == original.user_attrs["mlflow_run_id"]
    assert copy.info.status == "FINISHED" and copy.data.tags["optuna.trial"] == "2"
    assert copy.data.metrics["best/val/acc"] == runs[original.user_attrs["mlflow_run_id"]].data.metrics["best/val/acc"]
    assert not (tmp_path / "checkpoints" / "twins" / "trial-2").exists()  # nothing trained
    assert not [k for k in copy.data.metrics if k.startswith("system/")]
    assert parent.data.metrics["trials/duplicates"] == 1


def test_accuracy_and_speed_give_a_pareto_front_and_a_champion(tracking_store, tmp_path, capsys):
    path = tiny_experiment(tmp_path, "search:\n  study_name: fast\n  batch_size: {low: 8, high: 32}\n"
                                     "  lr: {low: 0.001, high: 0.05}\n  sampler: random\n"
                                     "  objectives: [val/acc, perf/images_per_s]\n",
                           **{"tracking.log_model": True})
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert main(["search", "--experiment", str(path), "--storage", storage, "--n_trials", "3"]) == 0
    assert "pruner off: Optuna prunes single-objective studies only" in capsys.readouterr().out
    study = optuna.load_study(study_name="fast", storage=storage)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MAXIMIZE"]
    assert study.metric_names == ["val/acc", "perf/images_per_s"]  # optuna-dashboard's axis names
    assert all(len(t.values) == 2 and t.values[1] > 0 for t in study.trials)
    parent, children = children_of(tracking_store)
    assert parent.data.params["search.pruner"].startswith("none (off:")
    artifacts = {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "pareto")}
    assert {"pareto/front.csv", "pareto/front.md", "pareto/front.png"} <= artifacts
    front = MlflowClient().download_artifacts(parent.info.run_id, "pareto/front.csv", str(tmp_path))
    rows = open(front).read().splitlines()
    assert rows[0].endswith("val/acc,perf/images_per_s,run_id") and len(rows) - 1 == len(study.best_trials)
    best = max(study.best_trials, key=lambda t: (t.values[0], -t.number))
    assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    version = MlflowClient().get_model_version_by_alias("freezeframe-experiment", "champion")
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    trials_md = MlflowClient().download_artifacts(parent.info.run_id, "summary/trials.md", str(tmp_path))
    assert "perf/steady_images_per_s" in open(trials_md).read()
    # optuna-dashboard (its own WSGI app over the same storage) shows both objectives and the front
    page = dashboard_json(storage, f"/api/studies/{study._study_id}")
    assert len(page["directions"]) == 2 and page["objective_names"] == ["val/acc", "perf/images_per_s"]
    assert {t["number"] for t in page["best_trials"]} == {t.number for t in study.best_trials}


def dashboard_json(storage: str, path: str) -> dict:
    import json
    import wsgiref.util

    import optuna_dashboard

    environ = {"PATH_INFO": path, "QUERY_STRING": "after=0", "REQUEST_METHOD": "GET"}
    wsgiref.util.setup_testing_defaults(environ)
    status = []
    body = b"".join(optuna_dashboard.wsgi(storage)(environ, lambda s, h, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), status
    return json.loads(body)


@pytest.mark.slow
def test_max_trials_stops_two_workers_at_the_total(tmp_path):
    """Two workers, each asked for 4 trials, on one journal file: the study's cap of 5 holds."""
    from tests.conftest import store_in
    from tests.test_workers import finish, start

    path = str(tiny_experiment(tmp_path, "search:\n  study_name: capped\n  batch_size: {low: 8, high: 64}\n"
                                         "  sampler: random\n  pruner: none\n", **{"tracking.log_plots": False}))
    storage, uri = f"journal:{tmp_path}/optuna.journal", store_in(tmp_path)
    outputs = finish([start(tmp_path, uri, "search", "--experiment", path, "--storage", storage, "--n_trials", "4",
                            "--max_trials", "5", "--seed", str(seed)) for seed in (0, 1)])
    study = optuna.load_study(study_name="capped",
                              storage=optuna.storages.JournalStorage(
                                  optuna.storages.journal.JournalFileBackend(f"{tmp_path}/optuna.journal")))
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert any("has its max_trials 5" in out for out in outputs)
    runs = runs_in(uri)
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 5
    assert {r.info.status for r in runs} == {"FINISHED"}

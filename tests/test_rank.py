"""`rank`: one linear_probe arm per backbone of a comparison, its features scored, the ranking on the parent."""

import csv
import io

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from freezeframe.cli import main
from tests.conftest import runs_in
from tests.test_compare import write_experiment
from tracking.studies import comparison_report

EXPERIMENT = """\
data: {{augment: true}}  # ranked features come without augmentation: rank turns it off
train: {{checkpoint_dir: {checkpoints}, batch_size: 16}}
compare:
  name: tiny
  backbones: [{{name: timm/test_resnet, weights: none}}, {{name: timm/test_efficientnet, weights: none}}]
  freeze: [frozen, unfrozen]
  seeds: [0, 1]
"""


def test_rank_scores_each_backbone_once_and_orders_them(tmp_path, tracking_store, capsys):
    """In this process: the `mlflow run` launcher's run nesting under a study's parent is the same code as
    compare's (tests/test_e2e.py, test_git_uri.py), and the rank entry point's parameters are checked
    against the parser by tests/test_readme.py."""
    experiment = tmp_path / "grid.yaml"
    experiment.write_text(EXPERIMENT.format(checkpoints=tmp_path / "checkpoints"))
    assert main(["rank", "--experiment", str(experiment), "--by", "logme", "--image_size", "32", "--max_samples",
                 "40", "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 0
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "rank · tiny-rank" and parent.info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
                and "worker_of" not in r.data.tags]
    # one arm per backbone, whatever the grid's policies and seeds
    assert sorted((r.data.tags["backbone"], r.data.tags["freeze"]) for r in children) == [
        ("timm/test_efficientnet", "linear_probe"), ("timm/test_resnet", "linear_probe")]
    assert {r.info.status for r in children} == {"FINISHED"}
    assert all({"score/logme", "score/knn_val_acc", "score/probe_val_acc"} <= set(r.data.metrics) for r in children)

    # the ranking orders by LogME, and every score's place is beside it
    text = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/rank/ranking.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    logme = {r.data.tags["backbone"]: r.data.metrics["score/logme"] for r in children}
    assert [row["backbone"] for row in rows] == sorted(logme, key=logme.get, reverse=True)
    assert [row["place_logme"] for row in rows] == ["1", "2"] and all(row["place_knn"] for row in rows)
    assert "Backbones ranked by LogME" in mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/rank/ranking.md")
    assert "plots/ranking.png" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id, "plots")}
    assert parent.data.tags["rank_by"] == "logme"
    assert parent.data.tags["ranking"] == " > ".join(f"{row['backbone']}@{row['weights']}" for row in rows)
    assert parent.data.metrics["rank/logme/timm/test_resnet"] == pytest.approx(logme["timm/test_resnet"])
    out = capsys.readouterr().out
    assert "Backbones ranked by LogME" in out and "MLflow:" in out


def test_rank_by_an_unknown_score_is_one_line(capsys):
    assert main(["rank", "--by", "h_score"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice: 'h_score'" in err


@pytest.mark.slow
def test_screening_fine_tunes_only_the_best_backbones_and_marks_the_others(tracking_store, tmp_path, capsys):
    grid = """\
  name: screened
  backbones: [timm/test_resnet, timm/test_efficientnet]
  freeze: [frozen, linear_probe, unfrozen]
  seeds: [3]
  screen: {by: linear_probe, keep: 1}
"""
    path = write_experiment(tmp_path, grid, **{"train.epochs": 1})
    assert main(["compare", "--experiment", path, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 0
    runs = runs_in(tracking_store)
    parents = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(parents) == {"rank · screened-rank", "compare · screened"}
    ranking = parents["rank · screened-rank"]
    best, other = (source.split("@")[0] for source in ranking.data.tags["ranking"].split(" > "))
    compare = parents["compare · screened"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == compare.info.run_id]
    arms = sorted((r.data.tags["backbone"], r.data.tags["freeze"]) for r in children)
    # the best backbone is fine-tuned; the other keeps its fixed-feature arms and is named as screened out
    assert arms == sorted([(best, "frozen"), (best, "linear_probe"), (best, "unfrozen"), (other, "frozen"),
                           (other, "linear_probe")])
    # the ranking ran the grid's seed (3, not the run's 0): its runs are the linear_probe arms, reused, not
    # trained twice; the statistics read their per-image outcomes from the runs they copy
    ranked = {r.data.tags["backbone"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == ranking.info.run_id}
    assert {r.data.tags["seed"] for r in ranked.values()} == {"3"}
    probes = [r for r in children if r.data.tags["freeze"] == "linear_probe"]
    for probe in probes:
        source = ranked[probe.data.tags["backbone"]]
        assert probe.data.tags["duplicate_of"] == source.info.run_id and probe.info.status == "FINISHED"
        assert probe.data.metrics["test/acc"] == source.data.metrics["test/acc"]
        assert probe.data.tags["config_digest"] == source.data.tags["config_digest"]
    records = comparison_report.arm_records(probes)
    assert all(r["outcomes"] is not None and len(r["outcomes"]) for r in records)
    assert compare.data.tags["screened_out"] == f"{other} (none)" and compare.info.status == "FINISHED"
    summary = mlflow.artifacts.load_text(f"runs:/{compare.info.run_id}/summary/summary.md")
    assert f"- {other} (none): linear_probe place 2 of 2, keep 1" in summary
    printed = capsys.readouterr().out
    assert f"screened by linear_probe: fine-tuning {best} (none); screened out: {other} (none)" in printed

    # a rerun ranks and screens the same way, and starts nothing
    assert main(["compare", "--experiment", path, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 0
    assert len(runs_in(tracking_store)) == len(runs)


def test_a_bad_screen_is_one_line_before_any_arm(tracking_store, tmp_path, capsys):
    path = write_experiment(tmp_path, "  backbones: [timm/test_resnet]\n  screen: {by: h_score, keep: 1}\n")
    assert main(["compare", "--experiment", path]) == 2
    assert "compare.screen.by must be one of logme, knn, linear_probe, got 'h_score'" in capsys.readouterr().err
    assert runs_in(tracking_store) == []

"""Racing a comparison: successive halving against other groups' arms, on real Optuna studies and runs."""

import mlflow
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from freezeframe.cli import main
from pipelines.studies.racing import RivalsPruner
from tests.conftest import runs_in
from tests.test_compare import write_experiment


def finished_arm(study: optuna.Study, freeze: str, value: float, backbone: str = "b", **attrs) -> None:
    """A complete arm that reached rung 0 (epoch 1) with `value`."""
    study.add_trial(create_trial(
        value=value, params={}, distributions={}, intermediate_values={1: value},
        user_attrs={"backbone": backbone, "weights": "w", "freeze": freeze, "seed": 0, **attrs},
        system_attrs={"completed_rung_0": value}))


def judged(study: optuna.Study, freeze: str, value: float, backbone: str = "b", **attrs) -> optuna.Trial:
    trial = study.ask()
    for key, attr in {"backbone": backbone, "weights": "w", "freeze": freeze, "seed": 1, **attrs}.items():
        trial.set_user_attr(key, attr)
    trial.report(value, step=1)
    return trial


def test_an_arm_is_raced_against_other_groups_only_and_never_against_a_probe():
    study = optuna.create_study(direction="maximize", pruner=RivalsPruner())
    finished_arm(study, "unfrozen", 0.9)  # seed 0 of the same group as the judged arms below
    finished_arm(study, "linear_probe", 0.95)  # a converged probe: its one value is no rung's bar
    finished_arm(study, "frozen", 0.5)
    # best among its rivals (frozen 0.5): goes on, though its own seed 0 did better
    assert not judged(study, "unfrozen", 0.6).should_prune()
    # below a rival group's value at the same rung: stopped
    assert judged(study, "last_n:2", 0.4).should_prune()
    # a linear probe is never stopped
    assert not judged(study, "linear_probe", 0.1).should_prune()


def test_an_lr_variant_races_its_siblings_too_but_never_its_groups_other_seeds():
    study = optuna.create_study(direction="maximize", pruner=RivalsPruner())
    finished_arm(study, "unfrozen", 0.9, seed=1, lr=0.1)  # the group's seed 1: no rival, whatever its lr
    finished_arm(study, "frozen", 0.5, lr=1e-3)
    finished_arm(study, "unfrozen", 0.95, seed=0, lr=1e-3)  # an earlier attempt of the variant judged next: not a rival
    # ahead of the other group: goes on
    assert not judged(study, "unfrozen", 0.6, seed=0, lr=1e-3).should_prune()
    # ahead of the other group too, but behind its sibling (seed 0 at lr 1e-3, 0.6): the poorer lr stops
    assert judged(study, "unfrozen", 0.55, seed=0, lr=3e-4).should_prune()


@pytest.mark.slow
def test_racing_stops_a_losing_arm_marks_it_and_keeps_it_out_of_the_statistics(tracking_store, tmp_path):
    grid = """\
  name: raced
  backbones: [{name: timm/tf_efficientnet_lite0, weights: imagenet}, {name: timm/test_resnet, weights: none}]
  freeze: [frozen, unfrozen]
  seeds: [0]
  racing: successive_halving
"""
    path = write_experiment(tmp_path, grid, **{"train.epochs": 2, "data.image_size": 64})
    assert main(["compare", "--experiment", path, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]) == 0
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    arms = {(r.data.tags["backbone"], r.data.tags["freeze"]): r for r in runs if r is not parent}
    # ImageNet features against a random-init network on the same 40 images: the random one is far behind
    # after epoch 1, and racing stops it there, KILLED and tagged PRUNED, saying at which epoch
    stopped = arms[("timm/test_resnet", "unfrozen")]
    assert stopped.info.status == "KILLED" and stopped.data.tags["optuna.state"] == "PRUNED"
    assert stopped.data.tags["error"].startswith("pruned at epoch 1 (val/acc")
    history = mlflow.MlflowClient().get_metric_history(stopped.info.run_id, "val/acc")
    assert [m.step for m in history] == [1]
    # the first cheap arm is never judged against anything yet: it finishes
    assert arms[("timm/tf_efficientnet_lite0", "frozen")].info.status == "FINISHED"
    pruned = [k for k, r in arms.items() if r.data.tags.get("optuna.state") == "PRUNED"]
    assert parent.data.tags["arms_pruned"] == str(len(pruned)) and parent.data.tags["arms_failed"] == "0"
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary/summary.md")
    assert "| timm/test_resnet · unfrozen · seed 0 | PRUNED | pruned at epoch 1" in summary
    table = summary.split("Arms that did not finish")[0]
    assert "| timm/test_resnet | unfrozen |" not in table  # not a group of the statistics
    study = optuna.load_study(study_name="raced", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert sum(t.state == TrialState.PRUNED for t in study.trials) == len(pruned)


def test_an_unknown_race_is_one_line(tracking_store, tmp_path, capsys):
    path = write_experiment(tmp_path, "  backbones: [timm/test_resnet]\n  racing: hyperband\n")
    assert main(["compare", "--experiment", path]) == 2
    assert "compare.racing must be one of none, successive_halving, got 'hyperband'" in capsys.readouterr().err



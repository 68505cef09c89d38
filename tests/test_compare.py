"""The compare entry point and its grid, in-process against a real sqlite store."""

import shutil

import mlflow
import optuna
import pytest
import torch

from freezeframe.cli import main
from pipelines.config import digest, load_config
from pipelines.errors import ConfigError
from pipelines.reports.predictions import outcomes
from pipelines.studies.arms import Arm, arm_config, parse_comparison
from pipelines.training.feature_cache import CachePlan
from pipelines.training.trainer import execute, prepare
from tests.conftest import runs_in, tiny_experiment, tiny_overrides


def write_experiment(tmp_path, compare: str, **overrides) -> str:
    return str(tiny_experiment(tmp_path, "compare:\n" + compare, filename="grid.yaml", **overrides))


def test_grid_is_the_cartesian_product(tmp_path):
    base = load_config(None, tiny_overrides(tmp_path))
    spec = parse_comparison({"name": "g", "backbones": ["timm/test_resnet", {"name": "torchvision/resnet18",
                                                                            "weights": "none"}],
                             "freeze": ["frozen", "unfrozen"], "seeds": [0, 1]}, base)
    assert len(spec.arms) == 8
    assert spec.arms[0] == Arm("timm/test_resnet", "none", "frozen", 0)
    assert Arm("torchvision/resnet18", "none", "unfrozen", 1) in spec.arms
    cfg = arm_config(base, spec.arms[-1])
    assert (cfg.model.backbone, cfg.model.freeze, cfg.seed) == ("torchvision/resnet18", "unfrozen", 1)


def test_explicit_arms(tmp_path):
    base = load_config(None, tiny_overrides(tmp_path))
    spec = parse_comparison({"arms": [{"freeze": "frozen"}, {"freeze": "last_n:1", "seed": 3}]}, base)
    assert [a.name for a in spec.arms] == ["timm/test_resnet · frozen · seed 0",
                                           "timm/test_resnet · last_n:1 · seed 3"]


def test_lr_variants_each_arm_that_trains_with_an_lr(tmp_path):
    """compare.lr: every arm once per lr (PyYAML's "3e-4" is a string: cast), named with it; a linear_probe
    arm, fitted without an lr, stays one arm at the base config: the same digest as without compare.lr."""
    base = load_config(None, tiny_overrides(tmp_path))
    section = {"freeze": ["linear_probe", "last_n:1"], "seeds": [0, 1]}
    spec, plain = parse_comparison({**section, "lr": ["3e-4", 0.01]}, base), parse_comparison(section, base)
    assert [a.name for a in spec.arms] == [
        "timm/test_resnet · linear_probe · seed 0", "timm/test_resnet · linear_probe · seed 1",
        "timm/test_resnet · last_n:1 · lr 3e-4 · seed 0", "timm/test_resnet · last_n:1 · lr 1e-2 · seed 0",
        "timm/test_resnet · last_n:1 · lr 3e-4 · seed 1", "timm/test_resnet · last_n:1 · lr 1e-2 · seed 1"]
    assert [c.train.lr for c in spec.configs] == [0.01, 0.01, 3e-4, 0.01, 3e-4, 0.01]
    assert spec.configs[2].tracking.run_name == spec.arms[2].name and plain.configs[2].tracking.run_name == ""
    digests = [digest(c) for c in spec.configs]
    assert len(set(digests)) == 6 and digests[:2] == [digest(c) for c in plain.configs[:2]]
    # the variant at the base lr is the plain arm's config: a rerun that adds compare.lr reuses its run
    assert digests[3] == digest(plain.configs[2])


@pytest.mark.parametrize("section, message", [
    ({"freeze": []}, "the comparison grid is empty"),
    ({"seeds": []}, "compare.seeds is empty"),
    ({"freeze": ["frozen", "frozen"]}, "duplicate arm 'timm/test_resnet · frozen · seed 0'"),
    ({"freeze": ["semi"]}, "unknown freeze policy 'semi'"),
    ({"arms": [{"freeze": "frozen"}], "seeds": [1]}, "either compare.arms or"),
    ({"grid": []}, "unknown key 'compare.grid'"),
    (None, "needs a 'compare:' section"),
    ({"lr": []}, "compare.lr must be a non-empty list of learning rates"),
    ({"lr": 1e-3}, "compare.lr must be a non-empty list of learning rates"),
    ({"lr": [1e-3, "fast"]}, r"compare.lr\[1\] must be float, got 'fast'"),
    ({"lr": [1e-3, 0]}, "compare.lr values must be numbers > 0, got 0.0"),
    ({"lr": [1e-3, 0.001]}, "compare.lr lists 1e-3 twice"),
    ({"freeze": ["linear_probe"], "lr": [1e-3]}, "compare.lr, but no arm trains with an lr"),
])
def test_bad_grids(tmp_path, section, message):
    with pytest.raises(ConfigError, match=message):
        parse_comparison(section, load_config(None, tiny_overrides(tmp_path)))


def test_gradual_schedule_past_the_last_epoch_fails_before_any_arm(tracking_store, tmp_path, capsys):
    path = write_experiment(tmp_path, "  freeze: [frozen, gradual]\n", **{"model.unfreeze_at": [2, 5]})
    assert main(["compare", "--experiment", path]) == 2
    assert "model.unfreeze_at [2, 5] must be increasing epochs within 2..train.epochs (2)" in capsys.readouterr().err
    assert runs_in(tracking_store) == []


@pytest.mark.slow
def test_comparison_parent_children_summary_and_resume(tracking_store, tmp_path, capsys):
    path = write_experiment(tmp_path, "  name: tiny\n  freeze: [frozen, unfrozen]\n  seeds: [0, 1]\n",
                            **{"eval.shifts": ["gaussian_noise:0.3", "rotate:45"]})
    assert main(["compare", "--experiment", path]) == 0
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags["split_digest"] for r in children} == {children[0].data.tags["split_digest"]}
    assert {r.data.tags["comparison"] for r in children} == {"tiny"}
    assert "timm/test_resnet · frozen · seed 1" in {r.info.run_name for r in children}
    assert parent.info.run_name == "compare · tiny" and parent.data.tags["arms_failed"] == "0"
    assert parent.data.tags["best_run_id"]
    acc = {(r.data.tags["freeze"], r.data.tags["seed"]): r.data.metrics["test/acc"] for r in children}
    delta = parent.data.metrics["delta/timm/test_resnet/unfrozen"]  # paired over seeds 0 and 1
    assert delta == pytest.approx((acc["unfrozen", "0"] - acc["frozen", "0"] + acc["unfrozen", "1"]
                                   - acc["frozen", "1"]) / 2)
    lo, hi = (parent.data.metrics[f"delta_ci_{end}/timm/test_resnet/unfrozen"] for end in ("lo", "hi"))
    assert lo <= delta <= hi and {k for k in parent.data.metrics if k.startswith("delta")} == {
        "delta/timm/test_resnet/unfrozen", "delta_ci_lo/timm/test_resnet/unfrozen",
        "delta_ci_hi/timm/test_resnet/unfrozen"}
    from mlflow.tracking import MlflowClient

    paths = {a.path for d in ("summary", "plots") for a in MlflowClient().list_artifacts(parent.info.run_id, d)}
    assert paths == {"summary/summary.md", "summary/summary.csv", "plots/val_acc_curves.png",
                     "plots/accuracy_vs_time.png", "plots/policy_vs_frozen.png", "plots/id_vs_ood.png",
                     *(f"summary/shift_{s}.{ext}" for s in ("gaussian_noise_0.3", "rotate_45")
                       for ext in ("md", "csv"))}
    # eval.shifts: each arm tested again under each shift, on the same shifted images, per image beside the clean
    import mlflow

    shifted = {(r.data.tags["freeze"], r.data.tags["seed"]): [r.data.metrics[f"shift/{s}/acc"] for s in
                                                             ("gaussian_noise_0.3", "rotate_45")] for r in children}
    clean_csv, noisy_csv = (mlflow.artifacts.load_text(f"runs:/{children[0].info.run_id}/reports/{f}.csv") for f in
                            ("test_predictions", "shift_predictions/gaussian_noise_0.3"))
    assert [line.split(",")[:3] for line in noisy_csv.splitlines()] == [
        line.split(",")[:3] for line in clean_csv.splitlines()]  # index, row, true: the same images
    ood = [sum(shifted["frozen", seed][i] for seed in "01") / 2 for i in range(2)]
    assert parent.data.metrics["ood_acc/timm/test_resnet/frozen"] == pytest.approx(sum(ood) / 2)
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary/summary.md")
    noisy = summary.split("## Under shift gaussian_noise:0.3")[1].split("## Under shift rotate:45")[0]
    assert "| timm/test_resnet | frozen | 2 | " in noisy and f"{ood[0]:.4f} ± " in noisy
    assert "Paired difference vs frozen (same seeds, same split)" in noisy and "test examples and 2 seeds" in noisy
    table = capsys.readouterr().out
    assert "| timm/test_resnet | frozen | 2 |" in table and " ± " in table
    assert "Paired difference vs frozen (same seeds, same split)" in table
    assert f"| timm/test_resnet | unfrozen | 2 | {delta:+.4f} | [{lo:+.4f}, {hi:+.4f}] |" in table
    # the interval is over the arms' own test images (reports/test_predictions.csv), nested in the 2 seeds
    assert f"| [{lo:+.4f}, {hi:+.4f}] | test examples and 2 seeds |" in table
    assert "Champion: timm/test_resnet · " in table and parent.data.tags["best_group"].startswith("timm/test_resnet · ")
    assert parent.data.tags["tied_with_best"] in ("none", "timm/test_resnet · frozen", "timm/test_resnet · unfrozen")
    # the way into the UI: links printed last, and the study's attrs for optuna-dashboard
    ui, eid = "http://127.0.0.1:5000", parent.info.experiment_id  # `make ui`, for a sqlite store
    assert f"MLflow: training runs  {ui}/#/experiments/{eid}/runs\n" in table and "MLflow: champion" not in table
    (compared,) = [line for line in table.splitlines() if line.startswith("MLflow: compare arms  ")]
    assert f"%22{eid}%22" in compared and all(f"%22{r.info.run_id}%22" in compared for r in children)
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert study.user_attrs["mlflow_parent_run_url"] == f"{ui}/#/experiments/{eid}/runs/{parent.info.run_id}"
    assert study.user_attrs["mlflow_experiment_url"] == f"{ui}/#/experiments/{eid}/runs"
    # the rerun: same parent, no new arm
    assert main(["compare", "--experiment", path]) == 0
    assert capsys.readouterr().out.count("FINISHED earlier") == 4
    again = runs_in(tracking_store)
    assert len(again) == 5 and {r.info.status for r in again} == {"FINISHED"}


def test_a_parent_never_adopts_arms_of_a_study_its_storage_does_not_hold(tracking_store, tmp_path, capsys):
    """The same URL, another file behind it (a deleted optuna.db here; a new temporary clone under
    `mlflow run <git URI>`): one line, before any arm is queued or trained, the parent left as it was."""
    path = write_experiment(tmp_path, "  name: held\n  freeze: [frozen]\n", **{"train.epochs": 1})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert main(["compare", "--experiment", path, "--storage", storage]) == 0
    before = runs_in(tracking_store)
    (tmp_path / "optuna.db").unlink()
    capsys.readouterr()
    assert main(["compare", "--experiment", path, "--storage", storage]) == 2
    err = capsys.readouterr().err
    (parent,) = [r for r in before if "mlflow.parentRunId" not in r.data.tags]
    assert err.count("\n") == 1 and f"compare 'held': its parent run {parent.info.run_id} holds runs of a study " \
        f"that the storage {storage} does not hold (the study there is new or empty)" in err
    after = runs_in(tracking_store)
    assert [(r.info.run_id, r.info.status) for r in after] == [(r.info.run_id, r.info.status) for r in before]
    study = optuna.load_study(study_name="held", storage=storage)
    assert study.trials == []  # nothing queued to dangle


def test_compare_lr_adds_variants_to_a_grid_and_reports_each_arm_at_its_lr_best_on_validation(tracking_store, tmp_path,
                                                                                               capsys):
    """The grid first at train.lr 0.01, then with compare.lr [0.01, 0.001]: the 0.01 variant is the arm that
    ran (the same config), reused and tagged; the 0.001 one trains. The arm is lp_ft:last_n:1 (its head from the
    probe, then the last stage trains on its cached prefix): the new policies through the compare entry point."""
    grid = "  name: lrs\n  freeze: [lp_ft:last_n:1]\n"
    assert main(["compare", "--experiment", write_experiment(tmp_path, grid, **{"train.epochs": 1})]) == 0
    capsys.readouterr()
    path = write_experiment(tmp_path, grid + "  lr: [0.01, 1e-3]\n", **{"train.epochs": 1})
    assert main(["compare", "--experiment", path]) == 0
    out = capsys.readouterr().out
    assert out.count("FINISHED earlier") == 1
    assert "timm/test_resnet · lp_ft:last_n:1 · lr 1e-2 · seed 0: FINISHED earlier" in out
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    variants = {r.data.tags["lr_variant"]: r for r in runs if r.data.tags.get("freeze") == "lp_ft:last_n:1"}
    assert len(runs) == 3 and set(variants) == {"1e-2", "1e-3"} and variants["1e-3"].data.params["train.lr"] == "0.001"
    assert variants["1e-3"].info.run_name == "timm/test_resnet · lp_ft:last_n:1 · lr 1e-3 · seed 0"
    trained = variants["1e-3"].data
    assert trained.tags["feature_cache"].startswith("memory: the prefix before ") and trained.metrics["probe/c"] > 0
    assert trained.tags["feature_cache_source"] in ("computed", "memory")
    # chosen on validation (a tie: the smaller step), reported on test
    chosen = max(variants, key=lambda lr: (variants[lr].data.metrics["best/val/acc"], -float(lr)))
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/summary/summary.md")
    assert f"| timm/test_resnet | lp_ft:last_n:1 | {chosen} | 2 |" in summary
    val, test = (variants[chosen].data.metrics[k] for k in ("best/val/acc", "test/acc"))
    assert f"| timm/test_resnet | lp_ft:last_n:1 | 1 | {val:.4f} ± — [—] | {test:.4f} ± — [—] |" in summary
    assert parent.data.tags["arms_total"] == "2" and parent.data.tags["best_run_id"] == variants[chosen].info.run_id


def test_a_failing_arm_fails_alone(tracking_store, tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not weights")
    path = write_experiment(tmp_path, f"  backbones: [timm/test_resnet, {{name: timm/test_resnet, weights: {bad}}}]\n"
                                      "  freeze: [frozen]\n")
    assert main(["compare", "--experiment", path]) == 0
    runs = runs_in(tracking_store)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    arms = {r.data.tags.get("weights"): r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert arms["none"].info.status == "FINISHED"
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert len(failed) == 1 and "cannot read weights file" in failed[0].data.tags["error"]
    assert parent.info.status == "FINISHED" and parent.data.tags["arms_failed"] == "1"
    # the rerun runs only the failed arm again
    assert main(["compare", "--experiment", path]) == 0
    assert len([r for r in runs_in(tracking_store) if r.info.status == "FINISHED"]) == 2


def test_batchnorm_that_trains_turns_the_feature_cache_off(tmp_path):
    """With model.bn=train a frozen backbone's features depend on each batch: caching them would change
    the result, so the run trains through the backbone and says why."""
    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "frozen", "model.bn": "train"}))
    plan = prepare(cfg).feature_cache
    assert not plan.on and "model.bn is train" in plan.reason


def test_feature_cache_matches_the_uncached_run(tmp_path):
    results = {}
    for mode in ("off", "memory"):
        cfg = load_config(None, tiny_overrides(tmp_path / mode, **{
            "model.freeze": "frozen", "data.feature_cache": mode, "train.epochs": 3, "eval.shifts": ["blur:0.01"]}))
        prepared = prepare(cfg)
        assert prepared.feature_cache == (CachePlan("off", "data.feature_cache is off") if mode == "off"
                                          else CachePlan("memory"))
        results[mode] = execute(prepared)
    off, cached = results["off"].fit, results["memory"].fit
    for a, b in zip(off.history, cached.history, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], abs=1e-4)
        assert a["val/acc"] == pytest.approx(b["val/acc"], abs=1e-6)
    assert off.test["test/loss"] == pytest.approx(cached.test["test/loss"], abs=1e-4)
    assert "perf/feature_extraction_s" in cached.extra
    head = results["off"].prepared.backbone.model.fc.weight
    assert torch.allclose(head, results["memory"].prepared.backbone.model.fc.weight, atol=1e-4)
    # per test image, in the same order: the same predictions and (nearly) the same probabilities
    assert (off.test_predictions[1] == cached.test_predictions[1]).all()
    assert off.test_p_true == pytest.approx(cached.test_p_true, abs=1e-4)
    # eval.shifts tests the whole network, whose head a cached run trained in place: a 0.01 px blur moves no pixel
    for done in results.values():
        y_true, y_pred = done.fit.test_predictions
        assert (outcomes(done.shifted["blur_0.01"].predictions_csv) == (y_true == y_pred)).all()


def test_feature_cache_is_off_with_augmentation_and_on_disk_when_asked(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "frozen", "data.augment": True}))
    plan = prepare(cfg).feature_cache
    assert not plan.on and plan.reason.startswith("random augmentation")
    disk = load_config(None, tiny_overrides(tmp_path, **{"model.freeze": "frozen", "data.feature_cache": "disk",
                                                         "data.cache_dir": str(tmp_path / "cache")}))
    first = execute(prepare(disk))
    assert first.fit.extra["feature_cache_source"] in ("computed", "memory")
    from pipelines.training import feature_cache

    feature_cache.clear()
    again = execute(prepare(disk))
    assert again.fit.extra["feature_cache_source"] == "disk" and len(list((tmp_path / "cache").glob("*.pt"))) == 1
    assert again.fit.test == pytest.approx(first.fit.test)


@pytest.mark.parametrize("policy, backbone", [("last_n:1", "timm/test_resnet"), ("lp_ft:stage:2", "timm/test_resnet"),
                                              ("gradual", "torchvision/mobilenet_v3_small")])
def test_a_partial_fine_tuning_trains_on_its_cached_prefix_with_the_uncached_runs_metrics(tmp_path, policy, backbone):
    """The stages before the first trained one run once (pipelines/models/prefix.py): every epoch's metrics,
    the test predictions and the trained weights are the uncached run's. lp_ft's probe comes first; gradual
    thaws the same stages (a torchvision network's stages are found on the whole network, not the rest); a
    cached run resumes from the uncached run's checkpoint (both hold the whole network)."""
    from pipelines.training import feature_cache

    results = {}
    for mode in ("off", "memory", "resumed"):
        feature_cache.clear()
        cfg = load_config(None, tiny_overrides(tmp_path / mode, **{
            "model.backbone": backbone, "model.freeze": policy, "data.feature_cache": mode.replace("resumed", "memory"),
            "train.epochs": 3, "eval.shifts": ["blur:0.01"], "train.resume": mode == "resumed"}))
        prepared = prepare(cfg)
        if mode == "resumed":  # the uncached run's last checkpoint, where the cached run looks for its own
            shutil.copytree(results["off"].prepared.checkpoint_dir, prepared.checkpoint_dir)
        results[mode] = execute(prepared)
    assert results["resumed"].fit.resumed_from_epoch == 3
    assert (results["resumed"].fit.test_predictions[1] == results["off"].fit.test_predictions[1]).all()
    plan = results["memory"].prepared.feature_cache
    assert plan.on and plan.cut is not None and str(plan).startswith("memory: the prefix before ")
    off, cached = results["off"].fit, results["memory"].fit
    for a, b in zip(off.history, cached.history, strict=True):
        for key in ("train/acc", "val/acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
        for key in ("train/loss", "val/loss"):  # the prefix ran at another batch size: float sums in another order
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    assert (off.test_predictions[1] == cached.test_predictions[1]).all()
    assert cached.extra["feature_cache_source"] == "computed" and "feature_cache_source" not in off.extra
    off_model, cached_model = (results[m].prepared.backbone.model for m in ("off", "memory"))
    for (name, a), b in zip(off_model.state_dict().items(), cached_model.state_dict().values(), strict=True):
        # the prefix is back, the rest trained alike (Adam divides by a gradient's own scale: float-order differences
        # in a near-zero gradient move a weight by a fraction of lr)
        assert torch.allclose(a.float(), b.float(), atol=1e-3), name
    # the whole network, prefix restored, is what the test under shift sees
    shifted = results["memory"].shifted["blur_0.01"].metrics["shift/blur_0.01/acc"]
    assert shifted == pytest.approx(cached.test["test/acc"])
    if policy.startswith("lp_ft"):
        assert results["memory"].probe is not None and cached.extra["probe/c"] > 0

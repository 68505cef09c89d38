"""Seed statistics of a comparison: checked against scipy, against a hand computation, and as rendered."""

import csv
import dataclasses
import io
import math
import time

import numpy as np
import pytest
from scipy import stats

from pipelines.reports.figures import delta_figure
from pipelines.reports.lr_choice import choose_lr
from pipelines.reports.stats import mean_ci, paired_bootstrap, paired_delta, verdict
from pipelines.reports.tables import csv_text, group_rows, markdown
from pipelines.reports.verdicts import paired_rows
from tracking.studies.comparison_report import delta_metrics


def test_mean_ci_by_hand():
    # mean 0.92; std sqrt((0.02² + 0 + 0.02²) / 2) = 0.02; half-width t(0.975, 2) · 0.02 / √3
    # = 4.302653 · 0.011547 = 0.049682
    ci = mean_ci([0.90, 0.92, 0.94])
    assert (ci.mean, ci.std, ci.n) == (pytest.approx(0.92), pytest.approx(0.02), 3)
    assert ci.half_width == pytest.approx(0.049682, abs=1e-6)
    assert (ci.lo, ci.hi) == (pytest.approx(0.870318, abs=1e-6), pytest.approx(0.969682, abs=1e-6))


@pytest.mark.parametrize("values, confidence", [([0.81, 0.86, 0.79, 0.90, 0.84], 0.95),
                                                ([0.5, 0.7], 0.95), ([0.61, 0.64, 0.60, 0.66], 0.90)])
def test_mean_ci_matches_scipy(values, confidence):
    ci = mean_ci(values, confidence)
    lo, hi = stats.t.interval(confidence, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (ci.lo, ci.hi) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert ci.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)


def test_one_value_has_no_spread():
    ci = mean_ci([0.9444])
    assert (ci.mean, ci.std, ci.n, ci.lo, ci.hi, ci.half_width) == (0.9444, None, 1, None, None, None)
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([])


def test_paired_delta_matches_ttest_rel_on_shared_seeds_only():
    a = {"0": 0.91, "1": 0.88, "2": 0.93, "10": 0.90, "7": 0.99}  # seed 7: only a ran it
    b = {"0": 0.85, "1": 0.86, "2": 0.88, "10": 0.87, "5": 0.10}  # seed 5: only b ran it
    d = paired_delta(a, b)
    assert d.seeds == ("0", "1", "2", "10") and d.n == 4  # numeric order, unpaired seeds left out
    shared_a, shared_b = [a[s] for s in d.seeds], [b[s] for s in d.seeds]
    interval = stats.ttest_rel(shared_a, shared_b).confidence_interval(0.95)
    assert (d.lo, d.hi) == (pytest.approx(interval.low, rel=1e-12), pytest.approx(interval.high, rel=1e-12))
    assert d.mean == pytest.approx(0.04) and d.std == pytest.approx(np.std([0.06, 0.02, 0.05, 0.03], ddof=1))
    assert paired_delta(a, {"3": 0.5}) is None
    one = paired_delta({"0": 0.9}, {"0": 0.8, "1": 0.7})
    assert (one.n, one.mean, one.lo, verdict(one)) == (1, pytest.approx(0.1), None, "no clear difference")


def test_verdict_needs_an_interval_clear_of_zero():
    assert verdict(mean_ci([0.02, 0.03, 0.04])) == "better"
    assert verdict(mean_ci([-0.02, -0.03, -0.04])) == "worse"
    assert verdict(mean_ci([-0.02, 0.01, 0.04])) == "no clear difference"
    assert verdict(None) == "no clear difference"


def arm(freeze: str, seed: str, test_acc: float, backbone: str = "timm/test_resnet", status: str = "FINISHED") -> dict:
    return {"backbone": backbone, "freeze": freeze, "seed": seed, "status": status, "run_id": f"r{freeze}{seed}",
            "error": "", "best_val_acc": test_acc - 0.01, "test_acc": test_acc, "test_f1_macro": test_acc - 0.02,
            "params_trainable": 10, "train_s": 2.0, "images_per_s": 100.0}


RECORDS = [arm("frozen", "0", 0.80), arm("frozen", "1", 0.82), arm("frozen", "2", 0.81),
           arm("unfrozen", "0", 0.90), arm("unfrozen", "1", 0.93), arm("unfrozen", "2", 0.91),
           arm("last_n:2", "0", 0.85), arm("last_n:2", "9", 0.70),  # seed 9 has no frozen partner
           arm("frozen", "0", 0.9444, backbone="tv/resnet18"), arm("unfrozen", "1", 0.5, backbone="tv/resnet18"),
           arm("unfrozen", "3", 0.1, status="FAILED")]


def test_summary_tables_and_csv():
    rows = group_rows(RECORDS)
    text = markdown(rows, [])
    val, test = mean_ci([a - 0.01 for a in (0.80, 0.82, 0.81)]), mean_ci([0.80, 0.82, 0.81])
    assert (f"| timm/test_resnet | frozen | 3 | 0.8000 ± 0.0100 [{val.lo:.4f}, {val.hi:.4f}] | "
            f"0.8100 ± 0.0100 [{test.lo:.4f}, {test.hi:.4f}] |") in text
    assert "| tv/resnet18 | frozen | 1 | 0.9344 ± — [—] | 0.9444 ± — [—] | 0.9244 ± — [—] | 10 | 2.0 | 100.0 |" in text
    assert "Paired difference vs frozen (same seeds, same split)" in text
    up = mean_ci([0.10, 0.11, 0.10])
    # no per-image outcomes in these records: the reading comes from the seed-level t-interval, and says so
    assert (f"| timm/test_resnet | unfrozen | 3 | +0.1033 | [{up.lo:+.4f}, {up.hi:+.4f}] | 3 seeds (t) | — | "
            f"[{up.lo:+.4f}, {up.hi:+.4f}] | better |") in text
    assert "| timm/test_resnet | last_n:2 | 1 | +0.0500 | — | 1 seed, no per-example outcomes | — | — | " \
           "no clear difference |" in text
    assert "| tv/resnet18 | unfrozen | 0 | — | — | — | — | — | no shared seeds |" in text
    assert "Champion: tv/resnet18 · frozen (mean test acc 0.9444)" in text
    assert "Nothing is tied with the champion." in text  # no interval to say so: one seed, no per-image outcomes
    table = list(csv.DictReader(io.StringIO(csv_text(rows))))
    assert len(table) == 5 and {"test_acc_ci_lo", "test_acc_ci_hi", "delta_ci_lo", "delta_seeds"} <= set(table[0])
    by = {(r["backbone"], r["freeze"]): r for r in table}
    assert by[("timm/test_resnet", "unfrozen")]["delta_seeds"] == "0 1 2"
    assert float(by[("timm/test_resnet", "unfrozen")]["delta_ci_lo"]) == pytest.approx(up.lo)
    assert by[("tv/resnet18", "frozen")]["test_acc_std"] == "" and by[("tv/resnet18", "frozen")]["test_acc_ci_lo"] == ""
    assert by[("timm/test_resnet", "frozen")]["delta_n"] == ""  # the reference has no delta to itself


def test_a_seed_run_twice_in_a_group_pairs_with_nothing():
    rows = group_rows([arm("frozen", "0", 0.8), arm("frozen", "1", 0.8), arm("unfrozen", "0", 0.9),
                       arm("unfrozen", "0", 0.7), arm("unfrozen", "1", 0.85)])
    (p,) = paired_rows(rows)
    assert p["delta"].seeds == ("1",) and p["delta"].mean == pytest.approx(0.05)


def test_paired_rows_against_another_reference():
    """The transfer report reads fine-tuning against the converged linear probe, too: the same pairing."""
    rows = group_rows([*RECORDS, arm("linear_probe", "0", 0.84), arm("linear_probe", "1", 0.84),
                       arm("linear_probe", "2", 0.84)])
    by = {p["freeze"]: p["delta"] for p in paired_rows(rows, "linear_probe")}
    assert set(by) == {"frozen", "unfrozen", "last_n:2"}  # the probe has no difference to itself
    assert by["unfrozen"].mean == pytest.approx(mean_ci([0.06, 0.09, 0.07]).mean)
    assert by["frozen"].mean == pytest.approx(-0.03) and by["last_n:2"].seeds == ("0",)


def test_delta_metrics_and_figure():
    paired = [p for p in paired_rows(group_rows(RECORDS)) if p["delta"] is not None]
    metrics = delta_metrics(paired)
    up = mean_ci([0.10, 0.11, 0.10])
    assert metrics == {"delta/timm/test_resnet/unfrozen": pytest.approx(up.mean),
                       "delta_ci_lo/timm/test_resnet/unfrozen": pytest.approx(up.lo),
                       "delta_ci_hi/timm/test_resnet/unfrozen": pytest.approx(up.hi),
                       "delta/timm/test_resnet/last_n_2": pytest.approx(0.05)}  # ':' is not portable
    figure = delta_figure(paired, "t")
    ax = figure.axes[0]
    assert len(ax.patches) == 2 and len(ax.containers) == 2  # two bars, one error bar (last_n:2 has no CI)
    assert ax.get_ylabel() == "test acc: policy − frozen (paired, 95% CI)"
    assert not any(math.isnan(v) for v in metrics.values())


def outcomes(right: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n test images of which `right` are classified right, in a random order."""
    return rng.permutation(np.arange(n) < right)


def test_paired_bootstrap_by_hand_and_against_scipy():
    rng = np.random.default_rng(7)
    a = outcomes(180, 200, rng)
    b = a.copy()
    flip = np.flatnonzero(a)[:30]  # 30 images a gets right and b wrong
    b[flip] = False
    b[np.flatnonzero(~a)[:10]] = True  # 10 the other way
    found = paired_bootstrap({"0": a}, {"0": b}, resamples=4000, seed=1)
    assert found.mean == pytest.approx((30 - 10) / 200) and (found.seeds, found.examples) == (1, 200)
    assert found.mcnemar_p == pytest.approx(stats.binomtest(30, 40, 0.5).pvalue)  # 30 of 40 discordant pairs
    assert found.mcnemar_p == pytest.approx(2 * sum(math.comb(40, k) for k in range(30, 41)) / 2 ** 40)  # by hand
    reference = stats.bootstrap((a.astype(float), b.astype(float)), lambda x, y, axis: (x - y).mean(axis=axis),
                                paired=True, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert found.lo == pytest.approx(reference.low, abs=0.01) and found.hi == pytest.approx(reference.high, abs=0.01)
    assert found.lo > 0 and verdict(dataclasses.replace(paired_delta({"0": 0.9}, {"0": 0.8}), bootstrap=found)) \
        == "better"
    assert paired_bootstrap({"0": a}, {"0": b}, resamples=4000, seed=1) == found  # seeded: the same interval
    same = paired_bootstrap({"0": a}, {"0": a.copy()})
    assert (same.lo, same.hi, same.mcnemar_p) == (0.0, 0.0, 1.0)
    assert paired_bootstrap({"0": a}, {"1": b}) is None


def test_paired_bootstrap_nests_seeds_over_the_same_images():
    """Every seed is tested on the same images: seeds that repeat one outcome add no images, so the
    interval is the one-seed interval (a bootstrap that took each seed for new images would shrink it
    by √3); seeds that disagree widen it."""
    rng = np.random.default_rng(3)
    base = outcomes(150, 200, rng)
    better = base | (rng.random(200) < 0.15)
    one = paired_bootstrap({"0": better}, {"0": base}, resamples=4000)
    copies = paired_bootstrap({s: better for s in "012"}, {s: base for s in "012"}, resamples=4000)
    assert copies.seeds == 3 and copies.mcnemar_p is None and copies.mean == pytest.approx(one.mean)
    assert copies.hi - copies.lo == pytest.approx(one.hi - one.lo, rel=0.15)
    swing = {"0": better, "1": base, "2": base | (rng.random(200) < 0.6)}
    wide = paired_bootstrap(swing, {s: base for s in "012"}, resamples=4000)
    assert wide.hi - wide.lo > 2 * (one.hi - one.lo)
    assert paired_bootstrap({"0": better, "1": better}, {"0": base}, seeds=("0", "1")) is None  # seed 1: no outcomes
    assert paired_bootstrap({"0": better}, {"0": base[:100]}) is None  # not the same images


def test_one_seed_needs_mcnemar_too():
    """5 images a gets right and b wrong, none the other way, of 1,000: the percentile bootstrap excludes
    0, but McNemar's exact p is 0.0625: no clear difference."""
    b = np.zeros(1000, bool)
    a = b.copy()
    a[:5] = True
    found = paired_bootstrap({"0": a}, {"0": b})
    assert found.lo > 0 and found.mcnemar_p == pytest.approx(0.0625)
    delta = dataclasses.replace(paired_delta({"0": 0.005}, {"0": 0.0}), bootstrap=found)
    assert verdict(delta) == "no clear difference"


def test_sixty_arms_of_ten_thousand_images_take_under_a_second():
    """The issue's budget, checked as a property of the statistics (not a timing of the machine): each
    comparison draws counts, not images, so it does O(resamples × seeds) work whatever the test set."""
    rng = np.random.default_rng(0)
    records = [dict(arm(policy, str(seed), 0.0, backbone=f"b{b}"), outcomes=outcomes(7000 + 100 * b, 10_000, rng))
               for b in range(10) for policy in ("frozen", "unfrozen") for seed in range(3)]
    for r in records:
        r["test_acc"] = float(r["outcomes"].mean())
    started = time.process_time()
    rows = group_rows(records)
    assert time.process_time() - started < 5  # generous on a loaded CI core; ~0.1 s here
    assert all(r["delta_covers"] == "test examples and 3 seeds" for r in rows if r["freeze"] == "unfrozen")
    assert sum(r["vs_best"] == "champion" for r in rows) == 1


def test_one_seed_with_outcomes_reads_the_data_and_names_the_ties():
    rng = np.random.default_rng(5)
    frozen = outcomes(160, 270, rng)
    unfrozen = frozen | (rng.random(270) < 0.5)  # fixes many of frozen's misses, breaks none
    twin = unfrozen.copy()  # an arm identical to unfrozen, image by image
    records = [dict(arm("frozen", "0", frozen.mean()), outcomes=frozen),
               dict(arm("unfrozen", "0", unfrozen.mean()), outcomes=unfrozen),
               dict(arm("frozen", "0", twin.mean(), backbone="other"), outcomes=twin)]
    rows = group_rows(records)
    text = markdown(rows, [])
    row = next(r for r in rows if r["freeze"] == "unfrozen")
    assert row["delta_ci_lo"] > 0 and row["delta_covers"] == "test examples only: 1 seed"
    assert row["delta_mcnemar_p"] < 1e-6
    assert "| better |" in text and "test examples only: 1 seed" in text
    assert "Champion: timm/test_resnet · unfrozen" in text
    assert "Tied with the champion: other · frozen." in text  # identical outcomes: a CI of [0, 0]
    behind = next(r for r in rows if r["freeze"] == "frozen" and r["backbone"] == "timm/test_resnet")
    assert behind["vs_best"] == "behind" and next(r for r in rows if r["backbone"] == "other")["vs_best"] == "tied"


def variant(freeze: str, seed: str, lr: str, val: float, test: float, status: str = "FINISHED",
            run_s: float = 10.0, monitor: str = "val/acc") -> dict:
    """A compare.lr variant's record, as comparison_report.arm_record reads it: its lr tag and its best
    monitored value on validation."""
    return {**arm(freeze, seed, test, status=status), "weights": "none", "lr": lr, "monitor": monitor,
            "best_monitored": val if status == "FINISHED" else None, "run_s": run_s, "run_id": f"{freeze}/{seed}/{lr}"}


def test_each_arm_counts_at_its_lr_best_on_validation_and_the_search_cost_is_said():
    records = [arm("linear_probe", "0", 0.84), arm("linear_probe", "1", 0.83),  # fitted without an lr: as ever
               variant("frozen", "0", "1e-3", 0.80, 0.79), variant("frozen", "0", "1e-2", 0.85, 0.78, run_s=20.0),
               variant("frozen", "1", "1e-3", 0.70, 0.81),
               variant("frozen", "1", "1e-2", 0.60, 0.99),  # best on test, not on validation: not chosen
               variant("unfrozen", "0", "1e-3", 0.90, 0.90, run_s=30.0),
               variant("unfrozen", "0", "1e-2", 0.0, 0.0, status="PRUNED", run_s=5.0),  # stopped: costs, never chosen
               variant("unfrozen", "1", "1e-3", 0.0, 0.0, status="FAILED")]  # no variant finished: no arm
    assert [r["run_id"] for r in choose_lr(records)] == ["rlinear_probe0", "rlinear_probe1", "frozen/0/1e-2",
                                                         "frozen/1/1e-3", "unfrozen/0/1e-3"]
    rows = group_rows(records)
    by = {r["freeze"]: r for r in rows}
    frozen, unfrozen = by["frozen"], by["unfrozen"]
    assert frozen["test_acc"] == pytest.approx((0.78 + 0.81) / 2) and frozen["lr"] == "1e-2 (seed 0); 1e-3 (seed 1)"
    assert (frozen["lr_variants"], frozen["lr_search_s"], frozen["lr_chosen_s"]) == (4, 50.0, 30.0)
    assert (unfrozen["seeds"], unfrozen["lr"], unfrozen["lr_variants"], unfrozen["lr_search_s"]) == (1, "1e-3", 3, 45.0)
    assert "lr" not in by["linear_probe"]
    # the verdicts pair the groups at their chosen lr: seed 0, 0.90 - 0.78
    assert unfrozen["delta_test_acc"] == pytest.approx(0.12)
    text = markdown(rows, [r for r in records if r["status"] != "FINISHED"])
    assert "| timm/test_resnet | frozen | 1e-2 (seed 0); 1e-3 (seed 1) | 4 | 50.0 | 30.0 | 1.7× |" in text
    assert "| timm/test_resnet | unfrozen | 1e-3 | 3 | 45.0 | 30.0 | 1.5× |" in text
    assert "| timm/test_resnet · unfrozen · lr 1e-2 · seed 0 | PRUNED |" in text
    columns = csv.DictReader(io.StringIO(csv_text(rows))).fieldnames
    assert {"lr", "lr_variants", "lr_search_s", "lr_chosen_s"} <= set(columns)
    # without compare.lr nothing changes: the same records, no lr section, no lr columns
    assert choose_lr(RECORDS) == RECORDS and "compare.lr" not in markdown(group_rows(RECORDS), [])
    assert "lr" not in csv.DictReader(io.StringIO(csv_text(group_rows(RECORDS)))).fieldnames
    # a loss is chosen low; a tie goes to the smaller step
    losses = [variant("frozen", "0", "1e-3", 0.5, 0.7, monitor="val/loss"), variant("frozen", "0", "1e-2", 0.4, 0.6,
                                                                                     monitor="val/loss")]
    assert [r["lr"] for r in choose_lr(losses)] == ["1e-2"]
    tied = [variant("frozen", "0", "1e-2", 0.8, 0.7), variant("frozen", "0", "1e-3", 0.8, 0.6)]
    assert [r["lr"] for r in choose_lr(tied)] == ["1e-3"]

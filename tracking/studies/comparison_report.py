"""The parent's summary of a comparison, built from its children as MLflow recorded them (so arms
skipped on a rerun are summarised like the ones just run): tables, figures, metrics and tags."""

from __future__ import annotations

import logging
import re

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import first_line
from pipelines.reports import figures
from pipelines.reports.lr_choice import choose_lr
from pipelines.reports.predictions import artifact_path, outcomes
from pipelines.reports.tables import against_frozen, arm_label, csv_text, group_rows, markdown
from pipelines.reports.under_shift import ood_points, shift_markdown, shift_tables
from pipelines.reports.verdicts import group_name
from tracking import tags
from tracking.models.registry import register_champion
from tracking.studies.parent_run import log_values

log = logging.getLogger(__name__)


def arm_record(run: Run) -> dict:
    m, t = run.data.metrics, run.data.tags
    monitor = run.data.params.get("train.monitor", "val/acc")
    train_s, images_per_s = m.get("perf/train_s"), m.get("perf/images_per_s")
    paid = [m[k] for k in ("perf/feature_extraction_s", "probe/fit_s", "probe/feature_extraction_s") if k in m]
    if train_s is not None and paid:
        # a cached arm's cost is its extraction pass plus the training on it; lp_ft's, its probe's too
        train_s += sum(paid)
        seen = float(run.data.params.get("data.n_train", 0)) * m.get("train/epochs_completed", 0)
        images_per_s = seen / train_s if train_s else None
    return {"backbone": t.get(tags.BACKBONE, "?"), "weights": t.get(tags.WEIGHTS, "?"),
            "freeze": t.get(tags.FREEZE, "?"), "seed": t.get(tags.SEED, "?"),
            # an arm racing stopped ended KILLED on purpose: PRUNED here, apart from the ones that broke
            "status": "PRUNED" if t.get(tags.OPTUNA_STATE) == "PRUNED" else run.info.status,
            "run_id": run.info.run_id, "error": t.get(tags.ERROR, ""),
            "best_val_acc": m.get("best/val/acc"), "test_acc": m.get("test/acc"),
            "test_f1_macro": m.get("test/f1_macro"), "params_trainable": m.get("model/params_trainable"),
            "train_s": train_s, "images_per_s": images_per_s, "peak_memory_mb": m.get("perf/peak_memory_mb"),
            # compare.lr: the variant's lr (tag), what chooses among variants, and each one's cost in run seconds
            "lr": t.get(tags.LR), "monitor": monitor, "best_monitored": m.get(f"best/{monitor}"),
            "run_s": (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time else None,
            "shifts": _shift_metrics(m)}


def _shift_metrics(metrics: dict[str, float]) -> dict[str, dict]:
    """shift name → the arm's test accuracies under it (eval.shifts: `shift/<name>/acc`), as a record names them."""
    names = [k.split("/")[1] for k in metrics if k.startswith("shift/") and k.endswith("/acc") and k.count("/") == 2]
    return {n: {"test_acc": metrics[f"shift/{n}/acc"], "test_f1_macro": metrics.get(f"shift/{n}/f1_macro")}
            for n in names}


def metric_key(*parts: str) -> str:
    """MLflow takes `/ \\w . - space` everywhere and `:` only off Windows, so `last_n:2` is logged as
    `last_n_2`: the same key on every client."""
    return "/".join(re.sub(r"[^/\w.\- ]", "_", part) for part in parts)


def delta_metrics(paired: list[dict]) -> dict[str, float]:
    """`delta/<backbone>/<policy>` (mean paired test-acc difference vs frozen) and the bounds of the CI
    its reading comes from: over test images (and seeds) where the arms logged them, else over two or
    more shared seeds."""
    metrics = {}
    for p in paired:
        d = p["delta"]
        if d is None:
            continue
        metrics[metric_key("delta", p["backbone"], p["freeze"])] = d.mean
        lo, hi = d.interval
        if lo is not None:
            metrics[metric_key("delta_ci_lo", p["backbone"], p["freeze"])] = lo
            metrics[metric_key("delta_ci_hi", p["backbone"], p["freeze"])] = hi
    return metrics


def per_image_outcomes(run_id: str, shift: str = "") -> np.ndarray | None:
    """A finished arm's per-image outcomes (reports/test_predictions.csv, or under a shift its file in
    reports/shift_predictions/); None for an arm logged before runs kept them, whose differences are then read
    over seeds only."""
    try:
        return outcomes(mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_path(shift)}"))
    except (MlflowException, OSError) as exc:  # missing (an older run), or the store failed: said, not hidden
        log.warning("run %s: no per-image outcomes (%s); its differences are read over seeds", run_id,
                    first_line(exc))
        return None


def arm_records(runs: list[Run]) -> list[dict]:
    """Each arm's record, a finished one with its per-image outcomes: what the summary's statistics read."""
    records = [arm_record(r) for r in runs]
    for record, run in zip(records, runs, strict=True):
        if record["status"] == "FINISHED":  # a reused run's outcomes are in the run it copied
            source = run.data.tags.get(tags.DUPLICATE_OF, run.info.run_id)
            record["outcomes"] = per_image_outcomes(source)
            for shift, found in record["shifts"].items():
                found["outcomes"] = per_image_outcomes(source, shift)
    return records


def current_attempts(runs: list[Run], digests: set[str]) -> list[Run]:
    """Per arm of this grid (by config digest), its FINISHED run, else its latest attempt; `runs` come
    oldest first. Arms of an earlier config stay under the parent but out of this summary."""
    chosen: dict[str, Run] = {}
    for run in runs:
        key = run.data.tags.get(tags.CONFIG_DIGEST)
        if key in digests and (key not in chosen or chosen[key].info.status != "FINISHED"):
            chosen[key] = run
    return list(chosen.values())


def log_summary(parent_run_id: str, name: str, runs: list[Run], experiment: str,
                screened_out: dict[str, str] | None = None) -> tuple[list[dict], str | None]:
    """Log the summary on the parent and register the best arm as `freezeframe-<experiment>@champion`;
    returns the grouped rows and the champion's models:/ URI (None when the best arm logged no model).
    `screened_out`: backbone → why it kept only its fixed-feature arms (compare.screen)."""
    client = MlflowClient()
    records = arm_records(runs)
    rows = group_rows(records)
    by_shift = shift_tables(records)  # eval.shifts: the same tables per shift
    failed = [r for r in records if r["status"] != "FINISHED"]
    screening = "".join(f"- {b}: {why}\n" for b, why in (screened_out or {}).items())
    sections = {shift: shift_markdown(shift, found) for shift, found in by_shift.items()}
    client.log_text(parent_run_id, markdown(rows, failed) + (
        f"\n\nScreened out (fixed-feature arms only, no fine-tuning):\n\n{screening}" if screening else "")
        + "".join(f"\n\n{text}" for text in sections.values()), "summary/summary.md")
    client.log_text(parent_run_id, csv_text(rows), "summary/summary.csv")
    for shift, found in by_shift.items():  # each shift's tables on their own too, as the clean ones are
        client.log_text(parent_run_id, sections[shift], f"summary/shift_{shift}.md")
        client.log_text(parent_run_id, csv_text(found), f"summary/shift_{shift}.csv")
    curves = {}
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/acc")
        if history:
            t = run.data.tags
            lr = f" · lr {t[tags.LR]}" if tags.LR in t else ""
            curves[f"{t.get(tags.BACKBONE)} · {t.get(tags.FREEZE)}{lr} · s{t.get(tags.SEED)}"] = (
                [h.step for h in history], [h.value for h in history])
    plots = {"plots/val_acc_curves.png": figures.arm_curves_figure(curves, "val/acc", f"{name}: val accuracy")}
    if rows:
        points = [{"label": f"{r['backbone']} · {r['freeze']}", "train_s": r["train_s"], "test_acc": r["test_acc"],
                   "test_acc_std": r["test_acc_std"]} for r in rows]
        plots["plots/accuracy_vs_time.png"] = figures.pareto_figure(points, f"{name}: accuracy vs training time")
    paired = [p for p in against_frozen(rows) if p["delta"] is not None]
    if paired:
        plots["plots/policy_vs_frozen.png"] = figures.delta_figure(paired, f"{name}: each policy against frozen")
    ood = ood_points(rows, by_shift)
    if ood:
        plots["plots/id_vs_ood.png"] = figures.id_vs_ood_figure(ood, f"{name}: clean against shifted test accuracy")
    for path, figure in plots.items():
        client.log_figure(parent_run_id, figure, path)
        plt.close(figure)
    metrics = delta_metrics(paired)
    metrics.update({metric_key("ood_acc", p["backbone"], p["freeze"]): p["ood_acc"] for p in ood})
    # the best arm among those the statistics read: an lr variant only where validation chose it
    finished = [r for r in choose_lr(records) if r["status"] == "FINISHED" and r["test_acc"] is not None]
    pruned = sum(r["status"] == "PRUNED" for r in records)
    run_tags = {tags.ARMS_TOTAL: str(len(records)), tags.ARMS_FAILED: str(len(failed) - pruned),
                tags.ARMS_PRUNED: str(pruned),
                tags.SCREENED_OUT: "; ".join(screened_out or {}) or "none"}
    best = max(finished, key=lambda r: r["test_acc"]) if finished else None
    if best is not None:
        metrics["best/test_acc"] = best["test_acc"]
        run_tags.update({tags.BEST_ARM: arm_label(best), tags.BEST_RUN_ID: best["run_id"]})
        champion = next(r for r in rows if r.get("vs_best") == "champion")
        tied = [group_name(r) for r in rows if r.get("vs_best") == "tied"]
        run_tags.update({tags.BEST_GROUP: group_name(champion), tags.TIED_WITH_BEST: "; ".join(tied) or "none"})
    log_values(parent_run_id, metrics, run_tags)
    if best is None:
        return rows, None
    description = (f"best arm of comparison {name}: {arm_label(best)}, test/acc {best['test_acc']:.4f}; "
                   f"run {best['run_id']}")
    return rows, register_champion(best["run_id"], f"freezeframe-{experiment}", description, parent_run_id)

"""The parent's summary of a comparison, built from its children as MLflow recorded them (so arms
skipped on a rerun are summarised like the ones just run): tables, figures, metrics and tags."""

from __future__ import annotations

import csv
import io
import statistics

import matplotlib.pyplot as plt
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipelines import reports
from tracking import tags
from tracking.parent_run import log_values
from tracking.registry import register_champion

GROUP_COLUMNS = ("backbone", "freeze", "seeds", "best_val_acc", "test_acc", "test_f1_macro", "params_trainable",
                 "train_s", "images_per_s")


def arm_record(run: Run) -> dict:
    m, t = run.data.metrics, run.data.tags
    train_s, images_per_s = m.get("perf/train_s"), m.get("perf/images_per_s")
    if train_s is not None and "perf/feature_extraction_s" in m:
        # cached frozen arm: its cost is the extraction pass plus the head's training, per image seen
        train_s += m["perf/feature_extraction_s"]
        seen = float(run.data.params.get("data.n_train", 0)) * m.get("train/epochs_completed", 0)
        images_per_s = seen / train_s if train_s else None
    return {"backbone": t.get(tags.BACKBONE, "?"), "freeze": t.get(tags.FREEZE, "?"), "seed": t.get(tags.SEED, "?"),
            "status": run.info.status, "run_id": run.info.run_id, "error": t.get(tags.ERROR, ""),
            "best_val_acc": m.get("best/val/acc"), "test_acc": m.get("test/acc"),
            "test_f1_macro": m.get("test/f1_macro"), "params_trainable": m.get("model/params_trainable"),
            "train_s": train_s, "images_per_s": images_per_s}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group_rows(records: list[dict]) -> list[dict]:
    """Mean ± std over seeds for each backbone × policy, from its FINISHED arms."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["status"] == "FINISHED" and r["test_acc"] is not None:
            groups.setdefault((r["backbone"], r["freeze"]), []).append(r)
    rows = []
    for (backbone, freeze), arms in groups.items():
        row = {"backbone": backbone, "freeze": freeze, "seeds": len(arms)}
        for key in ("best_val_acc", "test_acc", "test_f1_macro", "train_s", "images_per_s"):
            values = [a[key] for a in arms if a[key] is not None]
            row[key], row[f"{key}_std"] = _mean_std(values) if values else (float("nan"), 0.0)
        row["params_trainable"] = int(arms[0]["params_trainable"] or 0)
        rows.append(row)
    return rows


def _cell(row: dict, key: str) -> str:
    if key in ("best_val_acc", "test_acc", "test_f1_macro"):
        return f"{row[key]:.4f} ± {row[key + '_std']:.4f}"
    if key in ("train_s", "images_per_s"):
        return f"{row[key]:.1f}"
    return str(row[key])


def markdown(rows: list[dict], failed: list[dict]) -> str:
    lines = ["| " + " | ".join(GROUP_COLUMNS) + " |", "|" + "---|" * len(GROUP_COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, c) for c in GROUP_COLUMNS) + " |" for r in rows]
    if failed:
        lines += ["", "Arms that did not finish:", "", "| arm | status | error | run_id |", "|---|---|---|---|"]
        lines += [f"| {f['backbone']} · {f['freeze']} · seed {f['seed']} | {f['status']} | "
                  f"{f['error'].replace('|', '/')} | {f['run_id']} |" for f in failed]
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    keys = ["backbone", "freeze", "seeds", "params_trainable"]
    keys += [k for metric in ("best_val_acc", "test_acc", "test_f1_macro", "train_s", "images_per_s")
             for k in (metric, f"{metric}_std")]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def frozen_deltas(rows: list[dict]) -> dict[str, float]:
    by = {(r["backbone"], r["freeze"]): r["test_acc"] for r in rows}
    return {b: by[(b, "unfrozen")] - by[(b, "frozen")] for b, f in by if f == "frozen" and (b, "unfrozen") in by}


def current_attempts(runs: list[Run], digests: set[str]) -> list[Run]:
    """Per arm of this grid (by config digest), its FINISHED run, else its latest attempt; `runs` come
    oldest first. Arms of an earlier config stay under the parent but out of this summary."""
    chosen: dict[str, Run] = {}
    for run in runs:
        key = run.data.tags.get(tags.CONFIG_DIGEST)
        if key in digests and (key not in chosen or chosen[key].info.status != "FINISHED"):
            chosen[key] = run
    return list(chosen.values())


def log_summary(parent_run_id: str, name: str, runs: list[Run], experiment: str) -> tuple[list[dict], str | None]:
    """Log the summary on the parent and register the best arm as `freezeframe-<experiment>@champion`;
    returns the grouped rows and the champion's models:/ URI (None when the best arm logged no model)."""
    client = MlflowClient()
    records = [arm_record(r) for r in runs]
    rows = group_rows(records)
    failed = [r for r in records if r["status"] != "FINISHED"]
    client.log_text(parent_run_id, markdown(rows, failed), "summary/summary.md")
    client.log_text(parent_run_id, csv_text(rows), "summary/summary.csv")
    curves = {}
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val/acc")
        if history:
            t = run.data.tags
            curves[f"{t.get(tags.BACKBONE)} · {t.get(tags.FREEZE)} · s{t.get(tags.SEED)}"] = (
                [h.step for h in history], [h.value for h in history])
    figures = {"plots/val_acc_curves.png": reports.arm_curves_figure(curves, "val/acc", f"{name}: val accuracy")}
    if rows:
        points = [{"label": f"{r['backbone']} · {r['freeze']}", "train_s": r["train_s"], "test_acc": r["test_acc"],
                   "test_acc_std": r["test_acc_std"]} for r in rows]
        figures["plots/accuracy_vs_time.png"] = reports.pareto_figure(points, f"{name}: accuracy vs training time")
    deltas = frozen_deltas(rows)
    if deltas:
        figures["plots/frozen_vs_unfrozen.png"] = reports.delta_figure(deltas, f"{name}: what unfreezing buys")
    for path, figure in figures.items():
        client.log_figure(parent_run_id, figure, path)
        plt.close(figure)
    metrics = {f"delta/{backbone}": value for backbone, value in deltas.items()}
    finished = [r for r in records if r["status"] == "FINISHED" and r["test_acc"] is not None]
    run_tags = {"arms_total": str(len(records)), "arms_failed": str(len(failed))}
    best = max(finished, key=lambda r: r["test_acc"]) if finished else None
    if best is not None:
        metrics["best/test_acc"] = best["test_acc"]
        run_tags.update(best_arm=_arm_name(best), **{tags.BEST_RUN_ID: best["run_id"]})
    log_values(parent_run_id, metrics, run_tags)
    if best is None:
        return rows, None
    description = (f"best arm of comparison {name}: {_arm_name(best)}, test/acc {best['test_acc']:.4f}; "
                   f"run {best['run_id']}")
    return rows, register_champion(best["run_id"], f"freezeframe-{experiment}", description, parent_run_id)


def _arm_name(record: dict) -> str:
    return f"{record['backbone']} · {record['freeze']} · seed {record['seed']}"

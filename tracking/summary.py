"""A parent run's summary of its children: one row per arm, as CSV, Markdown and metrics."""

from __future__ import annotations

import csv
import io

import mlflow

from pipelines.run import PreparedRun, RunOutcome

COLUMNS = ("backbone", "freeze", "seed", "best_val_acc", "test_acc", "test_f1_macro", "params_trainable",
           "train_s", "images_per_s", "run_id")


def arm_row(prepared: PreparedRun, run_id: str, outcome: RunOutcome) -> dict:
    fit = outcome.fit
    history = fit.history
    return {
        "backbone": prepared.backbone.full_name, "freeze": prepared.cfg.model.freeze, "seed": prepared.cfg.seed,
        "best_val_acc": round(max(row["val/acc"] for row in history), 4) if history else float("nan"),
        "test_acc": round(fit.test["test/acc"], 4), "test_f1_macro": round(fit.test["test/f1_macro"], 4),
        "params_trainable": prepared.freeze.params_trainable, "train_s": round(fit.train_seconds, 1),
        "images_per_s": round(sum(r["perf/images_per_s"] for r in history) / max(len(history), 1), 1),
        "run_id": run_id,
    }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def csv_table(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def log_quickstart(rows: list[dict]) -> None:
    """On the active (parent) run: the table, each arm's test accuracy, and the best arm."""
    mlflow.log_text(csv_table(rows), "summary/arms.csv")
    mlflow.log_text(markdown_table(rows), "summary/arms.md")
    mlflow.log_metrics({f"{row['freeze']}/test_acc": row["test_acc"] for row in rows})
    best = max(rows, key=lambda r: r["test_acc"])
    mlflow.set_tags({"best_arm": f"{best['backbone']} · {best['freeze']}", "best_run_id": best["run_id"]})

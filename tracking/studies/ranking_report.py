"""A ranking's summary on its parent run: each backbone's frozen-feature scores, read back from its
linear_probe child, as rank/ranking.md and .csv, plots/ranking.png, the order as a tag, and each score
as a parent metric per backbone (`rank/<score>/<backbone>`), so the MLflow UI compares them. A backbone
is named with its weights, `<backbone>@<weights>`, in the tag, the tables and the plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from pipelines.ranking import SCORES
from pipelines.reports import figures
from pipelines.reports.ranking import agreement, ranking_csv, ranking_markdown, ranking_rows
from tracking import tags
from tracking.studies.comparison_report import arm_record, metric_key
from tracking.studies.parent_run import log_values

LABELS = {"logme": "LogME", "knn": "k-NN val acc", "linear_probe": "linear probe val acc"}


def ranking_record(run: Run) -> dict:
    """An arm's record (comparison_report.arm_record) with its features' scores."""
    m = run.data.metrics
    return {**arm_record(run), **{s: m.get(key) for s, key in SCORES.items()},
            "feature_dim": int(m.get("score/feature_dim", 0)), "extraction_s": m.get("perf/feature_extraction_s"),
            "score_s": m.get("perf/score_s")}


def log_ranking(parent_run_id: str, name: str, runs: list[Run], by: str) -> list[dict]:
    """Write the ranking on the parent; returns its rows, best first."""
    client = MlflowClient()
    rows = ranking_rows([ranking_record(r) for r in runs], by)
    client.log_text(parent_run_id, ranking_markdown(rows, by), "rank/ranking.md")
    client.log_text(parent_run_id, ranking_csv(rows), "rank/ranking.csv")
    placed = [r for r in rows if f"place_{by}" in r]
    if placed:
        figure = figures.ranking_figure(placed, LABELS, f"{name}: frozen-feature scores, by {LABELS[by]}")
        client.log_figure(parent_run_id, figure, "plots/ranking.png")
        plt.close(figure)
    # rank/<score>/<backbone>; <backbone>@<weights> where the ranking holds a backbone from two sources
    backbones = [r["backbone"] for r in rows]  # every source the ranking holds, finished or not
    shared = {b for b in backbones if backbones.count(b) > 1}
    metrics = {metric_key("rank", s, r["source"] if r["backbone"] in shared else r["backbone"]): r[s]
               for r in placed for s in SCORES}
    metrics.update({metric_key("rank", "kendall_tau", by, s): t for s, t in agreement(rows, by).items() if t == t})
    log_values(parent_run_id, metrics, {tags.RANK_BY: by, tags.RANKING: " > ".join(r["source"] for r in placed)})
    return rows

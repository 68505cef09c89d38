"""A ranking of backbones before any fine-tuning, from their frozen features' scores (pipelines/ranking):
one row per backbone, ordered by the chosen score, with its place under every other score beside it, so
a reader sees at once whether the scores agree."""

from __future__ import annotations

import csv
import io

from scipy import stats

from pipelines.ranking import SCORES
from pipelines.reports.tables import number

COLUMNS = ("source", "backbone", "weights", *SCORES, "feature_dim", "extraction_s", "score_s", "status", "run_id")


def source(record: dict) -> str:
    """What a ranking ranks: a backbone with its weights, `<backbone>@<weights>` (one backbone may come from
    two sources: ImageNet and a checkpoint pretrained on another dataset, say)."""
    return f"{record['backbone']}@{record['weights']}"


def ranking_rows(records: list[dict], by: str) -> list[dict]:
    """Finished records ordered by `by` (best first), each with its place under every score (`place_<score>`,
    1 = best); the ones that did not finish last, unplaced. Each row is named by its `source`."""
    records = [{**r, "source": source(r)} for r in records]
    done = [r for r in records if r["status"] == "FINISHED" and all(r.get(s) is not None for s in SCORES)]
    rest = [r for r in records if r not in done]
    rows = sorted(done, key=lambda r: -r[by])
    for score in SCORES:
        # rankdata of the negated score: 1 for the best; ties share the lowest place ("min")
        places = stats.rankdata([-r[score] for r in rows], method="min") if rows else []
        for row, place in zip(rows, places, strict=True):
            row[f"place_{score}"] = int(place)
    return [*rows, *rest]


def agreement(rows: list[dict], by: str) -> dict[str, float]:
    """Kendall's τ between the `by` order and each other score's order (nan with fewer than 2 backbones)."""
    placed = [r for r in rows if f"place_{by}" in r]
    if len(placed) < 2:
        return {s: float("nan") for s in SCORES if s != by}
    return {s: float(stats.kendalltau([r[by] for r in placed], [r[s] for r in placed]).statistic)
            for s in SCORES if s != by}


def ranking_markdown(rows: list[dict], by: str) -> str:
    names = {"logme": "LogME", "knn": "k-NN val acc", "linear_probe": "probe val acc"}
    lines = [f"Backbones ranked by {names[by]} (higher is better), best first; (n) is the place under that "
             "score. Scores read train and validation features only.", "",
             "| # | backbone@weights | " + " | ".join(names[s] for s in SCORES) + " | feature dim | extraction s |",
             "|" + "---|" * (4 + len(SCORES))]
    for i, r in enumerate(rows, 1):
        if f"place_{by}" not in r:
            why = f"{r['status']} {r.get('error', '')}".strip().replace("|", "/")
            lines.append(f"| — | {r['source']} | " + " | ".join("—" for _ in SCORES)
                         + f" | — | {why} |")
            continue
        cells = [f"{number(r[s], '.4f')} ({r[f'place_{s}']})" for s in SCORES]
        lines.append(f"| {i} | {r['source']} | " + " | ".join(cells)
                     + f" | {r['feature_dim']} | {number(r['extraction_s'], '.1f')} |")
    tau = agreement(rows, by)
    lines += ["", f"Kendall τ of the {names[by]} order with: "
              + ", ".join(f"{names[s]} {t:+.2f}" for s, t in tau.items()) + "."
              + (" (nan: undefined, with fewer than two backbones or one score the same for all)"
                 if any(t != t for t in tau.values()) else "")]
    return "\n".join(lines)


def ranking_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*COLUMNS, *(f"place_{s}" for s in SCORES)], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

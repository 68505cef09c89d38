"""A comparison's summary tables from its arms' records (plain dicts; the tracker reads and logs them):
per backbone × policy the spread over seeds, each policy's paired difference against frozen, and every
group against the champion (pipelines/reports/verdicts.py)."""

from __future__ import annotations

import csv
import io

from pipelines.reports.lr_choice import COLUMNS as LR_COLUMNS
from pipelines.reports.lr_choice import choose_lr, lr_columns, lr_lines
from pipelines.reports.stats import MeanCI, PairedDelta, mean_ci, verdict
from pipelines.reports.verdicts import (
    CHAMPION_WORDS,
    CONFIDENCE,
    DELTA_KEYS,
    REFERENCE,
    champion_rows,
    delta_columns,
    group_name,
    paired_rows,
)

ACCURACIES = ("best_val_acc", "test_acc", "test_f1_macro")
COSTS = ("train_s", "images_per_s", "peak_memory_mb")  # peak_memory_mb: the arm's perf/peak_memory_mb
GROUP_COLUMNS = ("backbone", "freeze", "seeds", *ACCURACIES, "params_trainable", *COSTS)
DASH = "—"


def _summary(values: list[float]) -> MeanCI:
    return mean_ci(values, CONFIDENCE) if values else MeanCI(float("nan"), None, 0, None, None, CONFIDENCE)


def _by_seed(arms: list[dict], key: str) -> dict:
    """`key` per seed; a seed run twice in one group (two weights of one backbone) pairs with nothing,
    since which of its two values to pair would be a guess."""
    counts: dict[str, int] = {}
    for a in arms:
        counts[a["seed"]] = counts.get(a["seed"], 0) + 1
    return {a["seed"]: a[key] for a in arms if counts[a["seed"]] == 1 and a.get(key) is not None}


def group_rows(records: list[dict]) -> list[dict]:
    """One row per backbone × policy over its FINISHED arms: mean, std and t-CI of each accuracy, mean
    and std of the costs, its paired test-acc delta vs frozen (for a policy other than frozen) and vs the
    champion. A record's `outcomes` (one boolean per test image, optional) makes those deltas per image.
    Each arm's compare.lr variants count as the one best on validation (lr_choice.choose_lr)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in choose_lr(records):
        if r["status"] == "FINISHED" and r["test_acc"] is not None:
            groups.setdefault((r["backbone"], r["freeze"]), []).append(r)
    rows = []
    for (backbone, freeze), arms in groups.items():
        row = {"backbone": backbone, "freeze": freeze, "seeds": len(arms), "params_trainable":
               int(arms[0]["params_trainable"] or 0), "test_acc_by_seed": _by_seed(arms, "test_acc"),
               "outcomes_by_seed": _by_seed(arms, "outcomes"),
               **lr_columns(arms, [r for r in records if (r["backbone"], r["freeze"]) == (backbone, freeze)])}
        for key in ACCURACIES + COSTS:
            s = _summary([a[key] for a in arms if a.get(key) is not None])
            row.update({key: s.mean, f"{key}_std": s.std})
            if key in ACCURACIES:
                row.update({f"{key}_ci_lo": s.lo, f"{key}_ci_hi": s.hi})
        rows.append(row)
    index = {(r["backbone"], r["freeze"]): r for r in rows}
    for p in paired_rows(rows):  # each difference computed once, here; the tables and figures read it
        index[(p["backbone"], p["freeze"])].update(vs_frozen=p, **delta_columns(p["delta"]))
    best, others = champion_rows(rows)
    if best is not None:
        best["vs_best"] = "champion"
    for p in others:
        index[(p["backbone"], p["freeze"])].update(vs_champion=p, vs_best=p["reading"] or "no shared seeds",
                                                   **delta_columns(p["delta"], "vs_best"))
    return rows


def against_frozen(rows: list[dict]) -> list[dict]:
    """group_rows' differences against frozen: {backbone, freeze, delta} per policy that has one."""
    return [r["vs_frozen"] for r in rows if "vs_frozen" in r]


def number(value: float | None, fmt: str = ".4f") -> str:
    return DASH if value is None or value != value else format(value, fmt)  # value != value: NaN


def _interval(lo: float | None, hi: float | None, fmt: str = ".4f", none: str = DASH) -> str:
    return none if lo is None else f"[{number(lo, fmt)}, {number(hi, fmt)}]"


def _cell(row: dict, key: str) -> str:
    if key in ACCURACIES:
        return (f"{number(row[key])} ± {number(row[key + '_std'])} "
                f"{_interval(row[key + '_ci_lo'], row[key + '_ci_hi'], none=f'[{DASH}]')}")
    if key in COSTS:
        return number(row[key], ".1f")
    return str(row[key])


def _delta_cells(d: PairedDelta) -> str:
    """n seeds | mean Δ | CI | what it covers | McNemar p | t-CI over seeds"""
    p = d.bootstrap.mcnemar_p if d.bootstrap else None
    return (f"{d.n} | {number(d.mean, '+.4f')} | {_interval(*d.interval, '+.4f')} | {d.covers} | "
            f"{number(p, '.2g')} | {_interval(d.lo, d.hi, '+.4f')}")


def _delta_line(p: dict, reading: str = "") -> str:
    d: PairedDelta | None = p["delta"]
    if d is None:
        return f"| {p['backbone']} | {p['freeze']} | 0 | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | no shared seeds |"
    return f"| {p['backbone']} | {p['freeze']} | {_delta_cells(d)} | {reading or verdict(d)} |"


def _champion_lines(rows: list[dict], pct: str) -> list[str]:
    best = next((r for r in rows if r.get("vs_best") == "champion"), None)
    others = [r["vs_champion"] for r in rows if "vs_champion" in r]
    if best is None or not others:
        return []
    tied = [group_name(p) for p in others if p["reading"] == "tied"]
    lines = ["", f"Champion: {group_name(best)} (mean test acc {number(best['test_acc'])}). Each other group's test "
             f"acc minus the champion's, paired as above; 'tied' when the {pct} CI contains 0.", "",
             f"| backbone | policy | n seeds | Δ test acc vs champion | {pct} CI | covers | McNemar p | "
             "t-CI over seeds | reading |", "|" + "---|" * 9]
    lines += [_delta_line(p, CHAMPION_WORDS.get(p["reading"], "")) for p in others]
    lines += ["", f"Tied with the champion: {', '.join(tied)}." if tied else "Nothing is tied with the champion."]
    return lines


def markdown(rows: list[dict], failed: list[dict]) -> str:
    pct = f"{CONFIDENCE:.0%}"
    lines = [f"Accuracies: mean ± std [{pct} CI, Student t] over seeds; {DASH} where one seed leaves it undefined.",
             "", "| " + " | ".join(GROUP_COLUMNS) + " |", "|" + "---|" * len(GROUP_COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, c) for c in GROUP_COLUMNS) + " |" for r in rows]
    lines += lr_lines(rows)
    paired = against_frozen(rows)
    if paired:
        lines += ["", f"Paired difference vs {REFERENCE} (same seeds, same split): test acc of the policy minus "
                  f"{REFERENCE}'s, image by image and seed by seed (a bootstrap that draws the test images, the same "
                  f"for every seed, then the seeds); 'better' or 'worse' only when the {pct} CI excludes 0 (with one "
                  "seed, McNemar's p < 0.05 too). 'covers' says what the interval's randomness spans; the Student-t "
                  "interval over seeds is beside it.", "",
                  f"| backbone | policy | n seeds | mean Δ test acc | {pct} CI | covers | McNemar p | "
                  "t-CI over seeds | reading |", "|" + "---|" * 9]
        lines += [_delta_line(p) for p in paired]
    lines += _champion_lines(rows, pct)
    if failed:
        lines += ["", "Arms that did not finish (PRUNED: stopped by racing, at the epoch said; none of them "
                  "counts in the statistics above):", "", "| arm | status | error | run_id |", "|---|---|---|---|"]
        lines += [f"| {arm_label(f)} | {f['status']} | "
                  f"{f['error'].replace('|', '/')} | {f['run_id']} |" for f in failed]
    return "\n".join(lines)


def arm_label(record: dict) -> str:
    """An arm's record named as its run is (arms.Arm.name): the lr too where it is a compare.lr variant."""
    lr = f" · lr {record['lr']}" if record.get("lr") is not None else ""
    return f"{record['backbone']} · {record['freeze']}{lr} · seed {record['seed']}"


def csv_text(rows: list[dict]) -> str:
    """One row per group; undefined stds and intervals are empty cells."""
    keys = ["backbone", "freeze", "seeds", "params_trainable"]
    keys += [k for m in ACCURACIES for k in (m, f"{m}_std", f"{m}_ci_lo", f"{m}_ci_hi")]
    keys += [k for m in COSTS for k in (m, f"{m}_std")]
    keys += [f"delta_{k}" for k in DELTA_KEYS] + ["vs_best"] + [f"vs_best_{k}" for k in DELTA_KEYS]
    keys += list(LR_COLUMNS) if any("lr" in r for r in rows) else []  # compare.lr's columns, only with it
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

"""A comparison's summary tables from its arms' records (plain dicts; the tracker reads and logs them):
per backbone × policy the spread over seeds, and per policy its paired difference against frozen."""

from __future__ import annotations

import csv
import io

from pipelines.reports.stats import MeanCI, PairedDelta, mean_ci, paired_delta, verdict

REFERENCE = "frozen"  # the cheap baseline every other policy has to beat
CONFIDENCE = 0.95
ACCURACIES = ("best_val_acc", "test_acc", "test_f1_macro")
COSTS = ("train_s", "images_per_s")
GROUP_COLUMNS = ("backbone", "freeze", "seeds", *ACCURACIES, "params_trainable", *COSTS)
DASH = "—"


def _summary(values: list[float]) -> MeanCI:
    return mean_ci(values, CONFIDENCE) if values else MeanCI(float("nan"), None, 0, None, None, CONFIDENCE)


def _by_seed(arms: list[dict]) -> dict[str, float]:
    """test_acc per seed; a seed run twice in one group (two weights of one backbone) pairs with
    nothing, since which of its two values to pair would be a guess."""
    counts: dict[str, int] = {}
    for a in arms:
        counts[a["seed"]] = counts.get(a["seed"], 0) + 1
    return {a["seed"]: a["test_acc"] for a in arms if counts[a["seed"]] == 1}


def group_rows(records: list[dict]) -> list[dict]:
    """One row per backbone × policy over its FINISHED arms: mean, std and t-CI of each accuracy, mean
    and std of the costs, and (for a policy other than frozen) its paired test-acc delta vs frozen."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        if r["status"] == "FINISHED" and r["test_acc"] is not None:
            groups.setdefault((r["backbone"], r["freeze"]), []).append(r)
    rows = []
    for (backbone, freeze), arms in groups.items():
        row = {"backbone": backbone, "freeze": freeze, "seeds": len(arms), "test_acc_by_seed": _by_seed(arms),
               "params_trainable": int(arms[0]["params_trainable"] or 0)}
        for key in ACCURACIES + COSTS:
            s = _summary([a[key] for a in arms if a[key] is not None])
            row.update({key: s.mean, f"{key}_std": s.std})
            if key in ACCURACIES:
                row.update({f"{key}_ci_lo": s.lo, f"{key}_ci_hi": s.hi})
        rows.append(row)
    index = {(r["backbone"], r["freeze"]): r for r in rows}
    for p in paired_rows(rows):
        index[(p["backbone"], p["freeze"])].update(_delta_columns(p["delta"]))
    return rows


def _delta_columns(d: PairedDelta | None) -> dict:
    if d is None:
        return {"delta_n": 0}
    return {"delta_test_acc": d.mean, "delta_test_acc_std": d.std, "delta_ci_lo": d.lo, "delta_ci_hi": d.hi,
            "delta_n": d.n, "delta_seeds": " ".join(d.seeds)}


def paired_rows(rows: list[dict]) -> list[dict]:
    """For each backbone with a frozen group, every other policy's test acc minus frozen's, paired on
    the seeds both ran (`delta` is None when they share none)."""
    frozen = {r["backbone"]: r["test_acc_by_seed"] for r in rows if r["freeze"] == REFERENCE}
    return [{"backbone": r["backbone"], "freeze": r["freeze"],
             "delta": paired_delta(r["test_acc_by_seed"], frozen[r["backbone"]], CONFIDENCE)}
            for r in rows if r["freeze"] != REFERENCE and r["backbone"] in frozen]


def _num(value: float | None, fmt: str = ".4f") -> str:
    return DASH if value is None or value != value else format(value, fmt)  # value != value: NaN


def _interval(lo: float | None, hi: float | None, fmt: str = ".4f", none: str = DASH) -> str:
    return none if lo is None else f"[{_num(lo, fmt)}, {_num(hi, fmt)}]"


def _cell(row: dict, key: str) -> str:
    if key in ACCURACIES:
        return (f"{_num(row[key])} ± {_num(row[key + '_std'])} "
                f"{_interval(row[key + '_ci_lo'], row[key + '_ci_hi'], none=f'[{DASH}]')}")
    if key in COSTS:
        return _num(row[key], ".1f")
    return str(row[key])


def _delta_line(p: dict) -> str:
    d: PairedDelta | None = p["delta"]
    if d is None:
        return f"| {p['backbone']} | {p['freeze']} | 0 | {DASH} | {DASH} | no shared seeds |"
    return (f"| {p['backbone']} | {p['freeze']} | {d.n} | {_num(d.mean, '+.4f')} | "
            f"{_interval(d.lo, d.hi, '+.4f')} | {verdict(d)} |")


def markdown(rows: list[dict], failed: list[dict]) -> str:
    pct = f"{CONFIDENCE:.0%}"
    lines = [f"Accuracies: mean ± std [{pct} CI, Student t] over seeds; {DASH} where one seed leaves it undefined.",
             "", "| " + " | ".join(GROUP_COLUMNS) + " |", "|" + "---|" * len(GROUP_COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, c) for c in GROUP_COLUMNS) + " |" for r in rows]
    paired = paired_rows(rows)
    if paired:
        lines += ["", f"Paired difference vs {REFERENCE} (same seeds, same split): test acc of the policy minus "
                  f"{REFERENCE}'s, seed by seed; 'better' or 'worse' only when the {pct} CI excludes 0.", "",
                  f"| backbone | policy | n seeds | mean Δ test acc | {pct} CI | reading |", "|" + "---|" * 6]
        lines += [_delta_line(p) for p in paired]
    if failed:
        lines += ["", "Arms that did not finish:", "", "| arm | status | error | run_id |", "|---|---|---|---|"]
        lines += [f"| {f['backbone']} · {f['freeze']} · seed {f['seed']} | {f['status']} | "
                  f"{f['error'].replace('|', '/')} | {f['run_id']} |" for f in failed]
    return "\n".join(lines)


def csv_text(rows: list[dict]) -> str:
    """One row per group; undefined stds and intervals are empty cells."""
    keys = ["backbone", "freeze", "seeds", "params_trainable"]
    keys += [k for m in ACCURACIES for k in (m, f"{m}_std", f"{m}_ci_lo", f"{m}_ci_hi")]
    keys += [k for m in COSTS for k in (m, f"{m}_std")]
    keys += ["delta_test_acc", "delta_test_acc_std", "delta_ci_lo", "delta_ci_hi", "delta_n", "delta_seeds"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

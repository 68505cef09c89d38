"""compare.lr: each backbone · policy · seed ran as a few lr variants, and its result is the variant best
on validation (its monitored metric's best epoch, the study's trial value), reported on test: the
published protocol (Kornblith et al. 2019; Kumar et al. 2022 keep the best of one lr grid on
validation). Choosing on test would flatter every group by its luckiest variant.

Records are comparison_report.arm_record's dicts; one without an `lr` passes through untouched, so a
grid without compare.lr keeps its tables exactly.
"""

from __future__ import annotations

from pipelines.config import MONITORS

COLUMNS = ("lr", "lr_variants", "lr_search_s", "lr_chosen_s")  # a group's (lr_columns)


def _variants_of(record: dict) -> tuple:
    return record["backbone"], record["weights"], record["freeze"], record["seed"]


def _on_validation(record: dict) -> tuple[float, float]:
    """Higher is better: the monitored metric turned to a maximum; on a tie the smaller lr, the safer step."""
    sign = 1.0 if MONITORS.get(record["monitor"], "max") == "max" else -1.0
    return sign * record["best_monitored"], -float(record["lr"])


def choose_lr(records: list[dict]) -> list[dict]:
    """The records with each arm's lr variants replaced by the FINISHED one best on validation (none where
    none finished: the caller lists those as unfinished)."""
    variants: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("lr") is not None:
            variants.setdefault(_variants_of(r), []).append(r)
    chosen: dict[tuple, dict] = {}
    for key, group in variants.items():
        # on validation alone: a table of test accuracies under a shift (pipelines/reports/under_shift.py)
        # reads the same variant as the clean one
        done = [r for r in group if r["status"] == "FINISHED" and r.get("best_monitored") is not None]
        if done:
            chosen[key] = max(done, key=_on_validation)
    return [r for r in records if r.get("lr") is None or chosen.get(_variants_of(r)) is r]


def lr_columns(arms: list[dict], records: list[dict]) -> dict:
    """A group's chosen lr (per seed where its seeds chose differently; `arms`: the chosen variants) and
    what its search cost: `lr_variants` (how many ran, stopped and failed ones included: every lr variant
    of `records`, the group's records), the run seconds of them all and of the chosen ones alone; {} for a
    group without lr variants."""
    if not any(a.get("lr") is not None for a in arms):
        return {}
    seeds: dict[str, list[str]] = {}
    for a in arms:
        seeds.setdefault(a["lr"], []).append(str(a["seed"]))
    lr = next(iter(seeds)) if len(seeds) == 1 else "; ".join(f"{lr} (seed {', '.join(s)})" for lr, s in seeds.items())
    variants = [r for r in records if r.get("lr") is not None]
    return {"lr": lr, "lr_variants": len(variants), "lr_search_s": sum(r.get("run_s") or 0.0 for r in variants),
            "lr_chosen_s": sum(a.get("run_s") or 0.0 for a in arms)}


def lr_lines(rows: list[dict]) -> list[str]:
    """The summary's lr section: which lr each group chose and what the search cost."""
    searched = [r for r in rows if "lr" in r]
    if not searched:
        return []
    lines = ["", "Learning rate (compare.lr), chosen per seed on validation (the monitored metric's best epoch); "
             "each arm's accuracies and differences in this summary are its chosen variant's. The search's cost: the "
             "run seconds of all the variants, stopped and failed ones included, against the chosen ones' alone.", "",
             "| backbone | policy | lr chosen | variants | search s | chosen s | search / chosen |", "|" + "---|" * 7]
    for r in searched:
        ratio = f"{r['lr_search_s'] / r['lr_chosen_s']:.1f}×" if r["lr_chosen_s"] else "—"
        lines.append(f"| {r['backbone']} | {r['freeze']} | {r['lr']} | {r['lr_variants']} | "
                     f"{r['lr_search_s']:.1f} | {r['lr_chosen_s']:.1f} | {ratio} |")
    return lines

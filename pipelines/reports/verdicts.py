"""Verdicts between a comparison's groups (one backbone × policy over its seeds): each policy against
`frozen` on the same backbone, and every group against the champion (the best mean test accuracy).

A difference is paired over the seeds both groups ran and, where their arms logged per-image outcomes
(reports/test_predictions.csv), over the test images too: every arm sees the same images, so even one
seed says whether two arms differ. The reading (better / worse / no clear difference) comes from that
interval; the seed-level Student-t interval is kept beside it.
"""

from __future__ import annotations

import dataclasses

from pipelines.reports.stats import PairedDelta, paired_bootstrap, paired_delta, verdict

REFERENCE = "frozen"  # the cheap baseline every other policy has to beat
CONFIDENCE = 0.95


def group_delta(a: dict, b: dict) -> PairedDelta | None:
    """Group a's test accuracy minus group b's, paired (None when they share no seed)."""
    d = paired_delta(a["test_acc_by_seed"], b["test_acc_by_seed"], CONFIDENCE)
    if d is None:
        return None
    # over exactly the seeds of the mean: none (the t-interval alone) unless both have outcomes for each
    return dataclasses.replace(d, bootstrap=paired_bootstrap(a["outcomes_by_seed"], b["outcomes_by_seed"],
                                                             CONFIDENCE, seeds=d.seeds))


def paired_rows(rows: list[dict], reference: str = REFERENCE) -> list[dict]:
    """For each backbone with a `reference` group (frozen unless said), every other policy's test acc
    minus the reference's (`delta` is None when they share no seed)."""
    base = {r["backbone"]: r for r in rows if r["freeze"] == reference}
    return [{"backbone": r["backbone"], "freeze": r["freeze"], "delta": group_delta(r, base[r["backbone"]])}
            for r in rows if r["freeze"] != reference and r["backbone"] in base]


# a difference's summary columns (delta_columns, under a prefix), in the CSV's order
DELTA_KEYS = ("test_acc", "test_acc_std", "ci_lo", "ci_hi", "covers", "mcnemar_p", "t_ci_lo", "t_ci_hi", "n", "seeds")
AGAINST_CHAMPION = {"no clear difference": "tied", "worse": "behind", "better": "ahead"}
# each reading against the champion, as a summary's table says it
CHAMPION_WORDS = {"tied": "tied with the champion", "behind": "behind the champion",
                  "ahead": "ahead on the shared seeds", "no interval": "no interval (1 seed, no per-image outcomes)"}


def champion_rows(rows: list[dict]) -> tuple[dict | None, list[dict]]:
    """The champion group (best mean test accuracy) and every other group's test acc minus the
    champion's, read as `tied` (the interval contains 0), `behind` or `ahead` (possible on the seeds
    both ran, when the champion's mean counts seeds the other lacks), `no interval` (one shared seed and
    no per-image outcomes); None: no shared seed, no verdict."""
    if not rows:
        return None, []
    best = max(rows, key=lambda r: r["test_acc"])
    others = []
    for r in rows:
        if r is not best:
            d = group_delta(r, best)
            reading = None if d is None else "no interval" if d.interval[0] is None else AGAINST_CHAMPION[verdict(d)]
            others.append({"backbone": r["backbone"], "freeze": r["freeze"], "delta": d, "reading": reading})
    return best, others


def group_name(row: dict) -> str:
    return f"{row['backbone']} · {row['freeze']}"


def delta_columns(d: PairedDelta | None, prefix: str = "delta") -> dict:
    """A difference as summary columns: the mean, the interval the reading comes from, what it covers,
    McNemar's p (one seed), and the seed-level t-interval."""
    if d is None:
        return {f"{prefix}_n": 0}
    lo, hi = d.interval
    columns = {"test_acc": d.mean, "test_acc_std": d.std, "ci_lo": lo, "ci_hi": hi, "covers": d.covers, "n": d.n,
               "seeds": " ".join(d.seeds), "mcnemar_p": d.bootstrap.mcnemar_p if d.bootstrap else None,
               "t_ci_lo": d.lo, "t_ci_hi": d.hi}
    assert set(columns) == set(DELTA_KEYS)
    return {f"{prefix}_{k}": v for k, v in columns.items()}

"""A comparison under distribution shift (eval.shifts): per shift, the clean summary's tables and paired
verdicts (tables.group_rows, over the arms' records with the shift's test accuracy and per-image outcomes in
place of the clean ones), and each group's clean test accuracy beside its mean accuracy under the shifts."""

from __future__ import annotations

import statistics

from pipelines.reports.tables import group_rows, markdown
from pipelines.shifts import spec_of


def shifted_records(records: list[dict], name: str) -> list[dict]:
    """Each arm's record with its test accuracies and outcomes under the shift `name` (a record's `shifts`) in
    place of the clean ones; None where the arm was not tested under it, which group_rows leaves out."""
    blank = {"test_acc": None, "test_f1_macro": None, "outcomes": None}
    return [{**r, **blank, **r.get("shifts", {}).get(name, {})} for r in records]


def shift_tables(records: list[dict]) -> dict[str, list[dict]]:
    """shift name → group_rows under that shift, for every shift some arm was tested under (sorted by name)."""
    names = sorted({name for r in records for name in r.get("shifts", {})})
    return {name: group_rows(shifted_records(records, name)) for name in names}


def shift_markdown(name: str, rows: list[dict]) -> str:
    """One shift's section of a summary: the clean summary's tables, read under the shift."""
    spec = spec_of(name)
    return (f"## Under shift {spec}\n\ntest_acc and test_f1_macro: on the test split under {spec}, every arm on the "
            "same shifted images (seeded per image); best_val_acc: clean, as it chose the epoch.\n\n"
            + markdown(rows, []))


def ood_points(rows: list[dict], by_shift: dict[str, list[dict]]) -> list[dict]:
    """Per group (backbone × policy) tested under shifts: its mean clean test accuracy (`id_acc`) and the mean over
    the shifts of its mean test accuracy under each (`ood_acc`)."""
    points = []
    for row in rows:
        key = (row["backbone"], row["freeze"])
        shifted = [r["test_acc"] for found in by_shift.values() for r in found if (r["backbone"], r["freeze"]) == key]
        if shifted:
            points.append({"backbone": key[0], "freeze": key[1], "id_acc": row["test_acc"],
                           "ood_acc": statistics.fmean(shifted), "shifts": len(shifted)})
    return points

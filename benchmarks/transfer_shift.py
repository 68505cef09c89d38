"""The transfer report's side under shift and its reading against the transfer literature since 2022:
each group's clean and shifted test accuracy and peak memory, LP-FT against fine-tuning clean and under
each shift, every policy against fine-tuning pooled over the shifts, and what reproduced. Every sentence is
computed from the paired intervals (verdicts.group_delta), none written in."""

from __future__ import annotations

import numpy as np

from benchmarks.transfer_findings import ci, pct, reading, said, short
from pipelines.reports.tables import group_rows
from pipelines.reports.under_shift import ood_points, shift_tables
from pipelines.reports.verdicts import group_delta, paired_rows
from pipelines.shifts import spec_of

FT = "unfrozen"  # plain fine-tuning, the baseline LP-FT, BitFit and surgical fine-tuning are measured against
KUMAR = "Kumar et al., *Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution*, ICLR 2022"
LEE = "Lee et al., *Surgical Fine-Tuning Improves Adaptation to Distribution Shifts*, ICLR 2023"
BITFIT = "Zaken et al. (BitFit, ACL 2022) and Cai et al. (TinyTL, NeurIPS 2020)"
HEADER = ["| backbone | policy | Δ test acc | 95% CI | covers | reading |", "|---|---|---|---|---|---|"]


def pooled_records(records: list[dict], names: list[str]) -> list[dict]:
    """Each arm's record under all the shifts at once: its mean accuracy over them, and its per-image outcomes
    of every shift one after another (the same images in the same order for every arm, so a difference pairs
    image by image, shift by shift)."""
    pooled = []
    for r in records:
        found = [r.get("shifts", {}).get(n) for n in names]
        ok = all(f and f.get("test_acc") is not None for f in found)
        outcomes = [f.get("outcomes") for f in found] if ok else []
        pooled.append({**r, "test_f1_macro": None,
                       "test_acc": float(np.mean([f["test_acc"] for f in found])) if ok else None,
                       "outcomes": np.concatenate(outcomes) if ok and all(o is not None for o in outcomes) else None})
    return pooled


WORDS = {"agrees": "better", "disagrees": "worse"}  # transfer_findings' readings, said of a difference


def word(d) -> str:
    return WORDS.get(reading(d), reading(d))


def delta_rows(rows: list[dict], policy: str | None = None) -> list[str]:
    """Each policy (or the one named) minus FT on the same backbone, paired."""
    out = []
    for p in paired_rows(rows, FT):
        d = p["delta"]
        if d is not None and (policy is None or p["freeze"] == policy):
            out.append(f"| {short(p['backbone'])} | {p['freeze']} | {pct(d.mean, '+')} | {ci(*d.interval, '+')} | "
                       f"{d.covers} | {word(d)} |")
    return out


def shift_lines(records: list[dict], rows: list[dict], rel: str) -> tuple[list[str], list[dict], dict]:
    """The report's sections under shift; also the ID-vs-OOD points (for the figure) and the tables by shift."""
    by_shift = shift_tables(records)
    if not by_shift:
        return [], [], {}
    names = list(by_shift)
    ood = {(p["backbone"], p["freeze"]): p for p in ood_points(rows, by_shift)}
    acc = {n: {(r["backbone"], r["freeze"]): r["test_acc"] for r in found} for n, found in by_shift.items()}
    lines = ["## Clean and under shift", "", "Each arm's best epoch tested on the same test images, clean and under "
             "each shift (seeded per image: every arm sees the same shifted images); mean over seeds, in %. "
             "Mean OOD: the mean over the shifts. Peak MB: the training process's peak resident memory "
             "(`perf/peak_memory_mb`, CPU).", "",
             "| backbone | policy | clean | " + " | ".join(spec_of(n) for n in names) + " | mean OOD | peak MB |",
             "|---|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        key = (r["backbone"], r["freeze"])
        cells = " | ".join(pct(acc[n].get(key)) for n in names)
        mean_ood = pct(ood[key]["ood_acc"]) if key in ood else "—"
        memory = "—" if r.get("peak_memory_mb") is None else f"{r['peak_memory_mb']:.0f}"
        lines.append(f"| {short(key[0])} | {key[1]} | {pct(r['test_acc'])} | {cells} | {mean_ood} | {memory} |")
    pooled = group_rows(pooled_records(records, names))
    lines += ["", f"![clean against shifted accuracy]({rel}/id_vs_ood.png)", "",
              f"## Each policy against fine-tuning ({FT}) under shift", "", "Test accuracy minus "
              f"{FT}'s, pooled over the {len(names)} shifts (each shift's images paired one by one, then the seeds; "
              "the bootstrap draws images within every shift alike), in percentage points.", "", *HEADER,
              *delta_rows(pooled), "", "## LP-FT against fine-tuning, clean and per shift", "",
              "lp_ft minus unfrozen, paired over the test images and seeds.", "",
              "| backbone | test | Δ test acc | 95% CI | covers | reading |", "|---|---|---|---|---|---|"]
    for name, found in [("clean", rows), *by_shift.items()]:
        lines += [line.replace("| lp_ft |", f"| {spec_of(name) if name != 'clean' else 'clean'} |", 1)
                  for line in delta_rows(found, "lp_ft")]
    return [*lines, ""], list(ood.values()), {"pooled": pooled, **by_shift}


def recent_findings(rows: list[dict], tables: dict) -> list[str]:
    """LP-FT, BitFit/norm and surgical fine-tuning's claims, each read from this run's paired intervals."""
    pooled = tables.get("pooled", [])
    lines = ["## Against the literature since 2022", ""]
    lp_clean = _deltas(rows, "lp_ft")
    lp_ood = _deltas(pooled, "lp_ft")
    lines += [f"**LP-FT** ({KUMAR}): about +1 % in distribution and +10 % out of distribution over plain fine-tuning. "
              f"Here, lp_ft minus unfrozen: clean {_list(lp_clean)}; under shift (pooled) {_list(lp_ood)}. "
              f"LP-FT ≥ FT out of distribution: {_verdict_words(lp_ood, want='not worse')}.", ""]
    probe_ood = _deltas(pooled, "linear_probe")
    lines += [f"Kumar et al. also find fine-tuning beats the probe in distribution but loses out of distribution. "
              f"Here, linear_probe minus unfrozen under shift (pooled): {_list(probe_ood)} "
              f"({_verdict_words(probe_ood, want='better')}).", ""]
    for part in ("bias", "norm"):
        clean = _deltas(rows, part)
        lines += [f"**{part}** ({BITFIT}): most of full fine-tuning's gain for a fraction of its memory. "
                  f"{part} minus unfrozen, clean: {_list(clean)}; peak memory {_memory(rows, part)}.", ""]
    stage0 = _deltas(pooled, "stage:0")
    lines += [f"**stage:0** ({LEE}): tuning the first stage suits input-level shifts (corruptions). Their claim is "
              "about fine-tuning on the shifted data; this report fine-tunes on clean data and tests under shift, "
              f"so it reads robustness, not adaptation. stage:0 minus unfrozen under shift (pooled): {_list(stage0)}.",
              ""]
    clean_best = max(rows, key=lambda r: r["test_acc"])
    ood = {(p["backbone"], p["freeze"]): p["test_acc"] for p in pooled}
    robust = max(ood, key=ood.get) if ood else None
    if robust:
        best = f"{short(clean_best['backbone'])} · {clean_best['freeze']} ({pct(clean_best['test_acc'])} %)"
        lines += [f"Best clean: {best}; best under shift (mean over the shifts): {short(robust[0])} · {robust[1]} "
                  f"({pct(ood[robust])} %).", ""]
    return lines


def _deltas(rows: list[dict], policy: str) -> list[tuple[str, object]]:
    index = {(r["backbone"], r["freeze"]): r for r in rows}
    return [(short(b), group_delta(index[(b, policy)], index[(b, FT)])) for b, f in index
            if f == policy and (b, FT) in index]


def _list(deltas: list[tuple[str, object]]) -> str:
    return "; ".join(f"{b} {said(d)} ({word(d)})" for b, d in deltas) or "not measured"


def _verdict_words(deltas: list[tuple[str, object]], want: str) -> str:
    """How many backbones show the claimed direction: `better` (the interval above 0) or `not worse`."""
    words = [reading(d) for _, d in deltas]
    if not words:
        return "not measured"
    hits = words.count("agrees") + (words.count("not resolved") if want == "not worse" else 0)
    return (f"{hits} of {len(words)} backbones ({words.count('agrees')} better, {words.count('disagrees')} worse, "
            f"{words.count('not resolved')} not resolved)")


def _memory(rows: list[dict], policy: str) -> str:
    mb = {(r["backbone"], r["freeze"]): r.get("peak_memory_mb") for r in rows}
    parts = [f"{short(b)} {mb[(b, policy)]:.0f} MB against {mb[(b, FT)]:.0f}" for b, f in mb
             if f == policy and mb.get((b, FT)) is not None and mb[(b, policy)] is not None]
    return "; ".join(parts) or "not measured"

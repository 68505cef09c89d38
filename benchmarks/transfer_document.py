"""docs/transfer-report.md from the transfer report's arm records: provenance, the results table, each
policy against frozen and against the linear probe (paired over test images and seeds), the champion
and its ties, the fixed-feature arms at native size, the figures, and the published findings."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from pathlib import Path

import matplotlib.pyplot as plt

from benchmarks.transfer_findings import PROBE, ci, pct, published_findings, short
from benchmarks.transfer_shift import recent_findings, shift_lines
from pipelines.reports import figures
from pipelines.reports.stats import verdict
from pipelines.reports.tables import group_rows, markdown
from pipelines.reports.verdicts import CHAMPION_WORDS, REFERENCE, group_delta, paired_rows

VERSIONED = ("torch", "torchvision", "timm", "mlflow", "optuna", "scipy", "scikit-learn")
DELTA_HEADER = ["| backbone | policy | seeds | Δ test acc | 95% CI | covers | McNemar p | t-CI over seeds | reading |",
                "|---|---|---|---|---|---|---|---|---|"]


def provenance(meta: dict, finished: int, failed: int, native: list[dict]) -> list[str]:
    """How the numbers were made: command, grids, wall time, machine, versions, data, where the runs are."""
    order, walls = meta["order"], meta.get("invocations", [])
    versions = ", ".join([f"python {platform.python_version()}"]
                         + [f"{p} {importlib.metadata.version(p)}" for p in VERSIONED])
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    wall = (f"{sum(w['wall_s'] for w in walls) / 60:.1f} min ({len(walls)} invocation"
            f"{'s' if len(walls) > 1 else ''} of this script), "
            f"{walls[-1]['workers']} workers × {walls[-1]['threads']} torch threads" if walls else "not recorded")
    sizes = ", ".join(f"{short(b)} {s} px" for b, s in meta.get("native_sizes", {}).items())
    native_done = sum(r["status"] == "FINISHED" for r in native)
    return ["## How it was made", "", f"- Command: `{walls[-1]['command'] if walls else '?'}`",
            f"- Grid: {meta['arms']} arms ({len(order['backbone'])} backbones with ImageNet weights × "
            f"{', '.join(order['freeze'])} × seeds {', '.join(map(str, order['seeds']))}); "
            f"{finished} finished, {failed} did not",
            f"- At native size: frozen and {PROBE} × seed 0 at {sizes or 'none'}; one comparison per backbone "
            f"(a grid has one image size), {native_done} of {len(native)} arms finished",
            f"- Wall time: {wall}", f"- Machine: {os.cpu_count()} cores, {cpu}", f"- Versions: {versions}",
            f"- Data: {meta['data.dataset']} from `{meta['source']}`; stratified splits train/val/test = "
            f"{meta['data.n_train']}/{meta['data.n_val']}/{meta['data.n_test']} images at "
            f"{meta['data.image_size']} px; epochs: {meta['train.epochs']}, lr {meta['train.lr']} (AdamW, cosine), "
            f"batch {meta['train.batch_size']}",
            f"- MLflow: parent run `{meta['parent']}` ({meta['parent_status']}) in `{meta['store']}`"
            + "".join(f"; native-size parent `{p['parent']}` ({p['parent_status']})" for p in meta.get("native", [])),
            ""]


def delta_lines(paired: list[dict]) -> list[str]:
    """One table row per difference: what its interval covers, McNemar's p (one seed), the seed-level t-CI."""
    lines = []
    for p in paired:
        d = p["delta"]
        mcnemar = d.bootstrap.mcnemar_p if d.bootstrap else None
        lines.append(f"| {short(p['backbone'])} | {p['freeze']} | {d.n} | {pct(d.mean, '+')} | "
                     f"{ci(*d.interval, '+')} | {d.covers} | {'—' if mcnemar is None else f'{mcnemar:.2g}'} | "
                     f"{ci(d.lo, d.hi, '+')} | {p.get('reading') or verdict(d)} |")
    return lines


def champion_lines(rows: list[dict]) -> list[str]:
    best = next((r for r in rows if r.get("vs_best") == "champion"), None)
    if best is None:
        return []
    others = [r["vs_champion"] for r in rows if "vs_champion" in r and r["vs_champion"]["delta"] is not None]
    tied = [f"{short(p['backbone'])} · {p['freeze']}" for p in others if p["reading"] == "tied"]
    return ["## The champion and its ties", "", f"Champion: **{short(best['backbone'])} · {best['freeze']}** (mean "
            f"test acc {pct(best['test_acc'])} %). Each other group minus the champion, paired as above; tied when "
            "the 95% CI contains 0. Tied with it: " + (", ".join(tied) if tied else "nothing") + ".", "",
            *DELTA_HEADER, *delta_lines([{**p, "reading": CHAMPION_WORDS[p["reading"]]} for p in others]), ""]


def layer_decay_lines(rows: list[dict]) -> list[str]:
    """When layer decay pays: each layer_decay policy against plain fine-tuning (unfrozen), paired."""
    decayed = [p for p in paired_rows(rows, "unfrozen") if p["freeze"].startswith("layer_decay") and p["delta"]]
    if not decayed:
        return []
    return ["## Layer decay against plain fine-tuning", "", "Each layer_decay policy minus unfrozen, paired as "
            "above. Layer decay keeps the early layers near their ImageNet weights: these rows say whether that "
            "paid on this target, at this data size.", "", *DELTA_HEADER,
            *delta_lines(decayed), ""]


def native_lines(native_rows: list[dict], rows: list[dict], meta: dict) -> list[str]:
    """The fixed-feature arms at native size: accuracy, the probe against frozen there, and each against
    the same policy at the grid's size (paired on seed 0 over the same test images)."""
    if not native_rows:
        return []
    small = {(r["backbone"], r["freeze"]): r for r in rows}
    sizes = meta.get("native_sizes", {})
    lines = ["## Fixed features at native size", "", f"The same splits and test images, each backbone at its own "
             f"input size (timm's pretrained config) instead of {meta['data.image_size']} px; seed 0. Δ is against "
             f"the same policy at {meta['data.image_size']} px, paired on seed 0 over the test images.", "",
             "| backbone | size | policy | test acc | Δ vs the grid's size | 95% CI | McNemar p | reading |",
             "|---|---|---|---|---|---|---|---|"]
    for r in native_rows:
        d = group_delta(r, small[(r["backbone"], r["freeze"])]) if (r["backbone"], r["freeze"]) in small else None
        p = d.bootstrap.mcnemar_p if d is not None and d.bootstrap else None
        delta = f"{pct(d.mean, '+')} | {ci(*d.interval, '+')}" if d else "— | —"
        lines.append(f"| {short(r['backbone'])} | {sizes.get(r['backbone'], '?')} px | {r['freeze']} | "
                     f"{pct(r['test_acc'])} | {delta} | {'—' if p is None else f'{p:.2g}'} | "
                     f"{verdict(d) if d else 'no shared seed'} |")
    probe = [p for p in paired_rows(native_rows) if p["freeze"] == PROBE and p["delta"] is not None]
    if probe:
        lines += ["", f"At native size, {PROBE} against frozen:", "", *DELTA_HEADER, *delta_lines(probe)]
    return [*lines, ""]


def write_report(records: list[dict], native: list[dict], meta: dict, report_path: Path) -> None:
    """The markdown report and its PNG figures (in <report stem>/ beside it), from arm records and run facts."""
    figdir = report_path.parent / report_path.stem
    figdir.mkdir(parents=True, exist_ok=True)
    order = meta["order"]
    rank = {(b, f): (i, j) for i, b in enumerate(order["backbone"]) for j, f in enumerate(order["freeze"])}
    rows = sorted(group_rows(records), key=lambda r: rank.get((r["backbone"], r["freeze"]), (99, 99)))
    native_rows = sorted(group_rows(native), key=lambda r: rank.get((r["backbone"], r["freeze"]), (99, 99)))
    paired = [p for p in paired_rows(rows) if p["delta"] is not None]
    vs_probe = [p for p in paired_rows(rows, PROBE) if p["delta"] is not None]
    failed = [r for r in records if r["status"] != "FINISHED"]
    plots = {
        "accuracy_vs_params.png": figures.params_figure(
            [{**r, "backbone": short(r["backbone"])} for r in rows], "Test accuracy vs trainable parameters"),
        "accuracy_vs_time.png": figures.pareto_figure(
            [{"label": f"{short(r['backbone'])} · {r['freeze']}", "train_s": r["train_s"], "test_acc": r["test_acc"],
              "test_acc_std": r["test_acc_std"]} for r in rows], "Test accuracy vs training time (mean ± std)"),
        "policy_vs_frozen.png": figures.delta_figure(
            [{**p, "backbone": short(p["backbone"])} for p in paired],
            "Each policy against frozen, paired on test images and seeds"),
    }
    rel = figdir.name
    under_shift, ood, shift_rows = shift_lines(records, rows, rel)
    if ood:
        plots["id_vs_ood.png"] = figures.id_vs_ood_figure([{**p, "backbone": short(p["backbone"])} for p in ood],
                                                          "Clean against mean shifted test accuracy")
    for name, fig in plots.items():
        fig.savefig(figdir / name, dpi=120)
        plt.close(fig)
    lines = [f"# Transfer report: {', '.join(map(short, order['backbone']))} × freeze policies on "
             f"{meta['data.dataset']}", "", f"Generated {datetime.date.today().isoformat()} by "
             "`benchmarks/transfer_report.py`; every statement below is computed from the runs.", ""]
    lines += provenance(meta, len(records) - len(failed), len(failed), native)
    lines += ["## Results", "", "Test accuracy in %: mean ± std over seeds, 95% Student-t CI over seeds; train s is "
              "the mean per arm and includes a fixed-feature arm's feature-extraction pass (0 when it read the "
              "features another arm cached).", "",
              "| backbone | policy | seeds | test acc | 95% CI | trainable params | train s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {short(r['backbone'])} | {r['freeze']} | {r['seeds']} | {pct(r['test_acc'])} ± "
              f"{pct(r['test_acc_std'])} | {ci(r['test_acc_ci_lo'], r['test_acc_ci_hi'])} | "
              f"{r['params_trainable']:,} | {r['train_s']:.1f} |" for r in rows]
    paired_how = ("paired over the test images (every arm sees the same ones) and the seeds: a bootstrap that "
                  "draws the images, the same for every seed, then the seeds; 'better' or 'worse' only when the "
                  "95% CI excludes zero. 'covers' says what the interval spans; the Student-t interval over seeds "
                  "alone is beside it.")
    lines += ["", f"![accuracy vs trainable parameters]({rel}/accuracy_vs_params.png)", "",
              f"![accuracy vs training time]({rel}/accuracy_vs_time.png)", "",
              f"## Each policy against {REFERENCE}", "", f"The policy's test accuracy minus {REFERENCE}'s in "
              f"percentage points, {paired_how}", "", *DELTA_HEADER, *delta_lines(paired), "",
              f"![each policy against frozen]({rel}/policy_vs_frozen.png)", "",
              f"## Each policy against {PROBE}", "", "The same, against the converged linear probe on the same "
              "features (Kornblith et al.'s fixed-feature protocol).", "", *DELTA_HEADER, *delta_lines(vs_probe), ""]
    lines += under_shift
    lines += champion_lines(rows)
    lines += layer_decay_lines(rows)
    lines += native_lines(native_rows, rows, meta)
    lines += published_findings(rows, native_rows, meta)
    lines += ["", *recent_findings(rows, shift_rows)] if shift_rows else []
    lines += ["", "## Appendix: the parent runs' summary tables", "", markdown(rows, failed), ""]
    if native_rows:
        lines += ["At native size (one comparison per backbone, tabled together):", "",
                  markdown(native_rows, [r for r in native if r["status"] != "FINISHED"]), ""]
    report_path.write_text("\n".join(lines))
    print(f"wrote {report_path} and {len(plots)} figures in {figdir}")

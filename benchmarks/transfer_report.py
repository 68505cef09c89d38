"""The transfer report: run experiments/transfer_report.yaml (EfficientNet-Lite0/1/2 × freeze policies ×
seeds on Fashion-MNIST) with N `python -m freezeframe compare` workers on one journal storage, then write
docs/transfer-report.md with its figures, checked against Kornblith, Shlens & Le (CVPR 2019).

    .venv/bin/python benchmarks/transfer_report.py --workers 2 --out /tmp/transfer-report

Rerun into the same --out to resume (finished arms are skipped by `compare` itself); `--report-only`
rewrites the report from --out. A smoke run narrows the grid and shrinks the data:

    .venv/bin/python benchmarks/transfer_report.py --out /tmp/tr-smoke --report /tmp/tr-smoke/report.md \
        --backbones lite0,lite1 --freeze frozen,unfrozen --seeds 0,1 \
        --set data.max_samples=40 --set train.epochs=1 --set data.image_size=64
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmarks.transfer_findings import ci, pct, published_findings, short  # noqa: E402
from pipelines.config import load_experiment  # noqa: E402
from pipelines.reports import figures  # noqa: E402
from pipelines.reports.stats import verdict  # noqa: E402
from pipelines.reports.tables import group_rows, markdown  # noqa: E402
from pipelines.reports.verdicts import REFERENCE, paired_rows  # noqa: E402
from pipelines.studies.arms import arm_configs, parse_comparison  # noqa: E402
from tracking import tags  # noqa: E402
from tracking.studies import parent_run  # noqa: E402
from tracking.studies.comparison_report import arm_record, current_attempts  # noqa: E402

VERSIONED = ("torch", "torchvision", "timm", "mlflow", "optuna", "scipy")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/transfer_report.yaml")
    p.add_argument("--workers", type=int, default=2, help="compare processes on one journal storage")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "transfer-report"),
                   help="work folder: mlflow.db, optuna.journal, checkpoints, worker logs (a rerun resumes)")
    p.add_argument("--report", default=str(ROOT / "docs/transfer-report.md"), help="figures go to <stem>/ beside it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to each worker")
    p.add_argument("--backbones", default="", help="narrow the grid: comma list of name suffixes (lite0,lite1)")
    p.add_argument("--freeze", default="", help="narrow the grid: comma list of policies")
    p.add_argument("--seeds", default="", help="narrow the grid: comma list of seeds")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --out; run nothing")
    return p.parse_args()


def derive_grid(args, out: Path) -> Path:
    """The experiment file as the workers run it: narrowed by --backbones/--freeze/--seeds (`--set`
    cannot reach the compare: section), checkpoints kept in --out. Same file name: same champion name."""
    source = Path(args.experiment) if Path(args.experiment).exists() else ROOT / args.experiment
    raw = yaml.safe_load(source.read_text())
    grid = raw["compare"]
    if args.backbones:
        grid["backbones"] = [b for b in grid["backbones"] if str(b["name"] if isinstance(b, dict) else b)
                             .endswith(tuple(args.backbones.split(",")))]
    if args.freeze:
        grid["freeze"] = args.freeze.split(",")
    if args.seeds:
        grid["seeds"] = [int(s) for s in args.seeds.split(",")]
    raw.setdefault("train", {})["checkpoint_dir"] = str(out / "checkpoints")
    path = out / Path(args.experiment).name
    path.write_text(f"# derived from {args.experiment} by benchmarks/transfer_report.py\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def run_workers(args, out: Path, grid: Path) -> float:
    """Start the workers, echo their arm lines, wait; any nonzero exit ends this script with the log tail."""
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "freezeframe", "compare", "--experiment", str(grid),
               "--storage", f"journal:{out / 'optuna.journal'}", *[x for s in args.set for x in ("--set", s)]]
    print(f"{args.workers} workers × {threads} torch threads: {shlex.join(command)}", flush=True)
    logs = [out / f"worker-{i}.log" for i in range(args.workers)]
    start = time.perf_counter()
    procs = [subprocess.Popen(command, cwd=out, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
             for log in logs]
    printed = [0] * len(logs)
    while True:  # Ctrl-C reaches the workers too: each ends its running arm KILLED and queues it again
        running = any(p.poll() is None for p in procs)
        for i, log in enumerate(logs):
            arms = [line for line in log.read_text().splitlines() if line.startswith("[trial ")
                    or "FINISHED earlier" in line]
            for line in arms[printed[i]:]:
                print(f"  {time.perf_counter() - start:6.0f} s  worker {i}: {line}", flush=True)
            printed[i] = len(arms)
        if not running:
            break
        time.sleep(2)
    wall = time.perf_counter() - start
    for p, log in zip(procs, logs, strict=True):
        if p.wait() != 0:
            sys.exit(f"worker {log.name} exited {p.returncode}:\n{log.read_text()[-3000:]}")
    return wall


def read_records(out: Path, grid: Path, sets: list[str]) -> tuple[list[dict], dict]:
    """The current attempt of every arm of this grid under the study's parent run, and the parent's facts."""
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    cfg, sections = load_experiment(grid, dict(s.split("=", 1) for s in sets))
    spec = parse_comparison(sections["compare"], cfg, str(grid))
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{tags.STUDY}` = '{spec.name}' and tags.`{tags.ENTRY_POINT}` = 'compare'"
    parents = [r for r in client.search_runs(ids, query, order_by=["attributes.start_time ASC"])
               if not {tags.PARENT, tags.WORKER_OF, tags.DUPLICATE_OF} & set(r.data.tags)]
    if not parents:
        sys.exit(f"no parent run 'compare · {spec.name}' in {out / 'mlflow.db'}")
    runs = current_attempts(parent_run.children(parents[0].info.run_id), set(arm_configs(spec)))
    done = [r for r in runs if r.info.status == "FINISHED"]
    params = done[0].data.params if done else {}
    inputs = done[0].inputs.dataset_inputs if done and done[0].inputs else []
    source = json.loads(inputs[0].dataset.source).get("tags", {}).get("source", "?") if inputs else "?"
    meta = {"parent": parents[0].info.run_id, "parent_status": parents[0].info.status, "source": source,
            "store": str(out / "mlflow.db"), "arms": len(spec.arms), **{k: params.get(k, "?") for k in (
                "data.dataset", "data.n_train", "data.n_val", "data.n_test", "data.image_size", "train.epochs",
                "train.lr", "train.batch_size", "data.max_samples")},
            "order": {"backbone": list(dict.fromkeys(a.backbone for a in spec.arms)),
                      "freeze": list(dict.fromkeys(a.freeze for a in spec.arms)),
                      "seeds": list(dict.fromkeys(a.seed for a in spec.arms))}}
    return [arm_record(r) for r in runs], meta


def provenance(meta: dict, finished: int, failed: int) -> list[str]:
    """How the numbers were made: command, grid, wall time, machine, versions, data, where the runs are."""
    order, walls = meta["order"], meta.get("invocations", [])
    versions = ", ".join([f"python {platform.python_version()}"]
                         + [f"{p} {importlib.metadata.version(p)}" for p in VERSIONED])
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    wall = (f"{sum(w['wall_s'] for w in walls) / 60:.1f} min ({len(walls)} invocation"
            f"{'s' if len(walls) > 1 else ''} of this script), "
            f"{walls[-1]['workers']} workers × {walls[-1]['threads']} torch threads" if walls else "not recorded")
    return ["## How it was made", "", f"- Command: `{walls[-1]['command'] if walls else '?'}`",
            f"- Grid: {meta['arms']} arms ({len(order['backbone'])} backbones with ImageNet weights × "
            f"{', '.join(order['freeze'])} × seeds {', '.join(map(str, order['seeds']))}); "
            f"{finished} finished, {failed} did not",
            f"- Wall time: {wall}", f"- Machine: {os.cpu_count()} cores, {cpu}", f"- Versions: {versions}",
            f"- Data: {meta['data.dataset']} from `{meta['source']}`; stratified splits train/val/test = "
            f"{meta['data.n_train']}/{meta['data.n_val']}/{meta['data.n_test']} images at "
            f"{meta['data.image_size']} px; epochs: {meta['train.epochs']}, lr {meta['train.lr']} (AdamW, cosine), "
            f"batch {meta['train.batch_size']}",
            f"- MLflow: parent run `{meta['parent']}` ({meta['parent_status']}) in `{meta['store']}`", ""]


def write_report(records: list[dict], meta: dict, report_path: Path) -> None:
    """The markdown report and its PNG figures (in <report stem>/ beside it), from arm records and run facts."""
    figdir = report_path.parent / report_path.stem
    figdir.mkdir(parents=True, exist_ok=True)
    order = meta["order"]
    rank = {(b, f): (i, j) for i, b in enumerate(order["backbone"]) for j, f in enumerate(order["freeze"])}
    rows = sorted(group_rows(records), key=lambda r: rank.get((r["backbone"], r["freeze"]), (99, 99)))
    paired = [p for p in paired_rows(rows) if p["delta"] is not None]
    failed = [r for r in records if r["status"] != "FINISHED"]
    plots = {
        "accuracy_vs_params.png": figures.params_figure(
            [{**r, "backbone": short(r["backbone"])} for r in rows], "Test accuracy vs trainable parameters"),
        "accuracy_vs_time.png": figures.pareto_figure(
            [{"label": f"{short(r['backbone'])} · {r['freeze']}", "train_s": r["train_s"], "test_acc": r["test_acc"],
              "test_acc_std": r["test_acc_std"]} for r in rows], "Test accuracy vs training time (mean ± std)"),
        "policy_vs_frozen.png": figures.delta_figure(
            [{**p, "backbone": short(p["backbone"])} for p in paired], "Each policy against frozen, paired on seeds"),
    }
    for name, fig in plots.items():
        fig.savefig(figdir / name, dpi=120)
        plt.close(fig)
    rel = figdir.name
    lines = [f"# Transfer report: {', '.join(map(short, order['backbone']))} × freeze policies on "
             f"{meta['data.dataset']}", "", f"Generated {datetime.date.today().isoformat()} by "
             "`benchmarks/transfer_report.py`; every statement below is computed from the runs.", ""]
    lines += provenance(meta, len(records) - len(failed), len(failed))
    lines += ["## Results", "", "Test accuracy in %: mean ± std over seeds, 95% Student-t CI; train s is the mean "
              "per arm and includes the frozen arms' one feature-extraction pass.", "",
              "| backbone | policy | seeds | test acc | 95% CI | trainable params | train s |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {short(r['backbone'])} | {r['freeze']} | {r['seeds']} | {pct(r['test_acc'])} ± "
              f"{pct(r['test_acc_std'])} | {ci(r['test_acc_ci_lo'], r['test_acc_ci_hi'])} | "
              f"{r['params_trainable']:,} | {r['train_s']:.1f} |" for r in rows]
    lines += ["", f"![accuracy vs trainable parameters]({rel}/accuracy_vs_params.png)", "",
              f"![accuracy vs training time]({rel}/accuracy_vs_time.png)", "",
              f"## Each policy against {REFERENCE}", "", "Paired on seeds (same split, same head init): the "
              f"policy's test accuracy minus {REFERENCE}'s, in percentage points; 'better' or 'worse' only when the "
              "95% CI excludes zero.", "", "| backbone | policy | seeds | Δ test acc | 95% CI | reading |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {short(p['backbone'])} | {p['freeze']} | {p['delta'].n} | {pct(p['delta'].mean, '+')} | "
              f"{ci(p['delta'].lo, p['delta'].hi, '+')} | {verdict(p['delta'])} |" for p in paired]
    lines += ["", f"![each policy against frozen]({rel}/policy_vs_frozen.png)", ""]
    lines += published_findings(rows, paired, meta)
    lines += ["", "## Appendix: the parent run's summary table", "", markdown(rows, failed), ""]
    report_path.write_text("\n".join(lines))
    print(f"wrote {report_path} and {len(plots)} figures in {figdir}")


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "invocations.json"
    invocations = json.loads(log_path.read_text()) if log_path.exists() else []
    if args.report_only:
        if not invocations:
            sys.exit(f"{out} holds no run of this script")
        grid, sets = Path(invocations[-1]["grid"]), invocations[-1]["sets"]
    else:
        grid, sets = derive_grid(args, out), args.set
        wall = run_workers(args, out, grid)
        python = os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd())) \
            else sys.executable
        invocations.append({"command": shlex.join([python, *sys.argv]), "grid": str(grid),
                            "sets": sets, "wall_s": wall, "workers": args.workers,
                            "threads": max(1, (os.cpu_count() or 1) // args.workers)})
        log_path.write_text(json.dumps(invocations, indent=1))
        print(f"all workers done in {wall:.0f} s")
    records, meta = read_records(out, grid, sets)
    write_report(records, {**meta, "invocations": invocations}, Path(args.report).resolve())


if __name__ == "__main__":
    main()

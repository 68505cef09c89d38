"""A comparison at a fraction of its grid (issue 23): do the frozen-feature scores rank backbones as
fine-tuning does, and do screening + racing find the full grid's champion for less compute?

    .venv/bin/python benchmarks/bench_compare_budget.py --out /tmp/budget

1. Sources of graded quality, made offline: timm/resnet18 pretrained by `freezeframe pretrain` on the
   *other* dataset for 1 and for 5 epochs, and random init, beside the three ImageNet EfficientNet-Lites.
2. Per target (digits, Fashion-MNIST): the full grid, 6 backbones × frozen, linear_probe, last_n:2,
   unfrozen × 3 seeds, through the product's own `compare` (2 workers, one journal storage).
3. Ranking: each score of the linear_probe arms (LogME, k-NN, the probe) against the fine-tuned order
   (per backbone the best mean test acc of last_n:2 and unfrozen): Kendall τ and weighted τ, beside
   two naive baselines, parameter count and published ImageNet top-1 (the Lites only).
4. Budget: per seed, the same grid with `screen` and `racing`: the seconds its arms (ranking arms
   included; its linear_probe arms are the ranking's runs, reused) ran against the full grid's arms of
   that seed, and whether its best group is the full grid's champion or tied with it.

Rerun into the same --out to resume; the tables go to stdout and to --report (docs/compare-budget.md).
A smoke run: --targets digits --seeds 0 --max-samples 40 --epochs 1 --source-samples 40 --report /tmp/b.md
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.transfer_findings import PUBLISHED_TOP1, short  # noqa: E402
from benchmarks.workers import run_workers  # noqa: E402
from pipelines.ranking import SCORES  # noqa: E402
from pipelines.reports.tables import group_rows  # noqa: E402
from pipelines.reports.verdicts import group_name  # noqa: E402
from tracking import tags  # noqa: E402
from tracking.studies import parent_run  # noqa: E402
from tracking.studies.comparison_report import arm_records  # noqa: E402

LITES = [{"name": f"timm/tf_efficientnet_lite{i}", "weights": "imagenet"} for i in range(3)]
OTHER = {"digits": "fashion-mnist", "fashion-mnist": "digits"}  # a source is pretrained on the other target
POLICIES = ["frozen", "linear_probe", "last_n:2", "unfrozen"]
FINE_TUNING = ("last_n:2", "unfrozen")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/compare-budget", help="work folder; a rerun resumes")
    p.add_argument("--report", default=str(ROOT / "docs/compare-budget.md"))
    p.add_argument("--targets", default="digits,fashion-mnist")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--max-samples", type=int, default=300, help="per split, for every run")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--source-samples", type=int, default=1000, help="per split, for pretraining the sources")
    p.add_argument("--screen-by", default="linear_probe", choices=tuple(SCORES))
    p.add_argument("--keep", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--tables-only", action="store_true", help="rewrite the tables from --out; run nothing")
    return p.parse_args()


def pretrained(out: Path, source: str, epochs: int, max_samples: int) -> dict:
    """timm/resnet18 trained from scratch on `source` and registered (once: a rerun reuses it)."""
    name = f"bench-resnet18-{source}-{epochs}ep"
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    if not MlflowClient().search_registered_models(f"name = '{name}'"):
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true",
               "TQDM_DISABLE": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
        subprocess.run([sys.executable, "-m", "freezeframe", "pretrain", "--experiment",
                        str(ROOT / "experiments/pretrain_fashion.yaml"), "--dataset", source, "--epochs", str(epochs),
                        "--max_samples", str(max_samples), "--registered_model", name,
                        "--set", f"train.checkpoint_dir={out / 'checkpoints'}",
                        "--set", "tracking.experiment_name=sources"],
                       cwd=out, env=env, check=True)
    return {"name": "timm/resnet18", "weights": f"models:/{name}@pretrained"}


def grid_file(out: Path, name: str, target: str, backbones: list, seeds: list[int], args, extra: dict) -> Path:
    raw = {"data": {"dataset": target, "image_size": 64, "max_samples": args.max_samples},
           "train": {"epochs": args.epochs, "lr": 0.003, "checkpoint_dir": str(out / "checkpoints")},
           "tracking": {"log_model": False, "experiment_name": f"budget-{target}"},
           "compare": {"name": name, "backbones": backbones, "freeze": POLICIES, "seeds": seeds, **extra}}
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def records(name: str, kind: str = "compare") -> list[dict]:
    """Every child of the parent `<kind> · <name>`, with its run's seconds (start to end, set-up included)."""
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    (parent,) = [r for r in client.search_runs(ids, f"attributes.run_name = '{kind} · {name}'")
                 if tags.PARENT not in r.data.tags and tags.WORKER_OF not in r.data.tags]
    runs = parent_run.children(parent.info.run_id)
    found = arm_records(runs)
    for record, run in zip(found, runs, strict=True):
        record.update(seconds=((run.info.end_time or run.info.start_time) - run.info.start_time) / 1000,
                      kind=kind, reused=tags.DUPLICATE_OF in run.data.tags,
                      screened_out=parent.data.tags.get(tags.SCREENED_OUT, "—"),
                      scores={s: run.data.metrics.get(key) for s, key in SCORES.items()},
                      costs={k: run.data.metrics.get(k) for k in ("perf/feature_extraction_s", "perf/score_s",
                                                                  "perf/train_s")})
    return found


def label(backbone: str, weights: str) -> str:
    source = "" if weights == "imagenet" else "·" + weights.removeprefix("models:/bench-resnet18-")
    return short(backbone) + source


def ranking_table(full: list[dict]) -> list[str]:
    """τ of each score's order (and of the naive baselines) against the fine-tuned order."""
    by_key: dict[tuple, dict] = {}
    for r in full:
        entry = by_key.setdefault((r["backbone"], r["weights"]), {"tuned": [], "params": 0, "scores": None})
        if r["status"] == "FINISHED" and r["freeze"] in FINE_TUNING:
            entry["tuned"].append((r["freeze"], r["seed"], r["test_acc"]))
        if r["freeze"] == "unfrozen" and r["params_trainable"]:
            entry["params"] = r["params_trainable"]
        if r["freeze"] == "linear_probe" and r["status"] == "FINISHED":
            entry["scores"] = r["scores"]
    rows = []
    for (backbone, weights), e in by_key.items():
        means = {}
        for freeze, _, acc in e["tuned"]:
            means.setdefault(freeze, []).append(acc)
        if means and e["scores"]:
            rows.append({"backbone": label(backbone, weights), "tuned": max(sum(v) / len(v) for v in means.values()),
                         "params": e["params"], "top1": PUBLISHED_TOP1.get(backbone) if weights == "imagenet" else None,
                         **e["scores"]})
    rows.sort(key=lambda r: -r["tuned"])
    lines = ["| backbone | fine-tuned test acc | " + " | ".join(SCORES) + " | params |",
             "|" + "---|" * (3 + len(SCORES))]
    lines += [f"| {r['backbone']} | {r['tuned']:.4f} | " + " | ".join(f"{r[s]:.4f}" for s in SCORES)
              + f" | {int(r['params']):,} |" for r in rows]
    tuned = [r["tuned"] for r in rows]
    lines += ["", "| order by | Kendall τ | weighted τ | over |", "|---|---|---|---|"]
    for key in (*SCORES, "params"):
        values = [r[key] for r in rows]
        lines.append(f"| {key} | {stats.kendalltau(values, tuned).statistic:+.2f} | "
                     f"{stats.weightedtau(tuned, values).statistic:+.2f} | {len(rows)} backbones |")
    lites = [r for r in rows if r["top1"] is not None]
    for key in ("top1", *SCORES) if len(lites) >= 2 else ():
        tau = stats.kendalltau([r[key] for r in lites], [r["tuned"] for r in lites]).statistic
        lines.append(f"| {key} (the Lites only) | {tau:+.2f} | — | {len(lites)} backbones |")
    # a probe that read features another arm cached has no extraction pass to compare with
    probes = [r["costs"] for r in full if r["freeze"] == "linear_probe" and r["status"] == "FINISHED"
              and r["costs"]["perf/feature_extraction_s"]]
    if probes:
        mean = {k: sum(c[k] for c in probes) / len(probes) for k in probes[0]}
        lines += ["", f"Cost per backbone (mean of {len(probes)} linear_probe arms that extracted their features): "
                  f"extraction {mean['perf/feature_extraction_s']:.2f} s; LogME + k-NN {mean['perf/score_s']:.2f} s "
                  f"({mean['perf/score_s'] / mean['perf/feature_extraction_s']:.2f}× the extraction); the probe's fits "
                  f"{mean['perf/train_s']:.2f} s ({mean['perf/train_s'] / mean['perf/feature_extraction_s']:.2f}×)."]
    return lines


def budget_table(full: list[dict], raced: dict[int, list[dict]]) -> list[str]:
    rows = group_rows(full)
    champion = next(r for r in rows if r.get("vs_best") == "champion")
    tied = {group_name(r) for r in rows if r.get("vs_best") == "tied"} | {group_name(champion)}
    lines = [f"Full grid's champion: {group_name(champion)}; tied with it: "
             f"{', '.join(sorted(tied - {group_name(champion)})) or 'nothing'}.", "",
             "| seed | arms run (ranking + comparison) | pruned | fine-tuned backbones | seconds vs the full grid's "
             "(its arms of that seed) | best group | the champion or tied |", "|---|---|---|---|---|---|---|"]
    for seed, arms in raced.items():
        own = sum(r["seconds"] for r in arms)
        base = sum(r["seconds"] for r in full if r["seed"] == str(seed))
        finished = [r for r in arms if r["status"] == "FINISHED" and r["kind"] == "compare"]
        best = max(group_rows(finished), key=lambda r: r["test_acc"])
        tuned = sorted({label(r["backbone"], r["weights"]) for r in arms if r["freeze"] in FINE_TUNING})
        kinds = " + ".join(str(sum(r["kind"] == k for r in arms)) for k in ("rank", "compare")) \
            + f" ({sum(r['reused'] for r in arms)} reused)"
        lines.append(f"| {seed} | {kinds} | {sum(r['status'] == 'PRUNED' for r in arms)} | {', '.join(tuned)} | "
                     f"{own:.0f} s / {base:.0f} s = {own / base:.2f} | {group_name(best)} | "
                     f"{'yes' if group_name(best) in tied else 'no'} |")
    return lines


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = ["# A comparison at a fraction of its grid", "", "Made by `benchmarks/bench_compare_budget.py` "
             f"(--max-samples {args.max_samples} per split, 64 px, {args.epochs} epochs, screen by {args.screen_by} "
             f"keeping {args.keep}, racing successive_halving, {args.workers} workers); every figure below is computed "
             "from the runs in its work folder.", ""]
    for target in args.targets.split(","):
        full_name, raced_names = f"budget-{target}-full", {seed: f"budget-{target}-race-{seed}" for seed in seeds}
        if not args.tables_only:
            sources = [pretrained(out, OTHER[target], epochs, args.source_samples) for epochs in (1, 5)]
            backbones = [*LITES, *sources, {"name": "timm/resnet18", "weights": "none"}]
            run_workers(out, "compare", grid_file(out, full_name, target, backbones, seeds, args, {}), [], args.workers)
            for seed, name in raced_names.items():
                extra = {"screen": {"by": args.screen_by, "keep": args.keep}, "racing": "successive_halving"}
                run_workers(out, "compare", grid_file(out, name, target, backbones, [seed], args, extra), [],
                            args.workers)
        mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
        full = records(full_name)
        raced = {seed: records(name) + records(f"{name}-rank", "rank") for seed, name in raced_names.items()}
        lines += [f"## {target}", "", "### Ranking before fine-tuning", "", *ranking_table(full), "",
                  "### Screening + racing against the full grid", "", *budget_table(full, raced), ""]
    text = "\n".join(lines)
    Path(args.report).write_text(text)
    print(text)


if __name__ == "__main__":
    main()

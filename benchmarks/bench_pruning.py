"""What pruning and the sampler save in a batch-size search, against the exhaustive grid, in one process.

The space is a realistic one: batch sizes 8..256 step 8 (32 values) x lr log-uniform, 8 epochs a
trial, for EfficientNet-Lite0 (bundled ImageNet weights) training its last 2 stages on digits. The
grid trains every batch size at one fixed lr, to the end; every other variant (random, TPE with no
pruner, median, successive halving, Hyperband) searches batch size x lr with the same trial budget,
once per sampler seed. A trial whose params a finished trial already had reuses its value (as the
product does), so it costs nothing. Reported per variant, over the seeds:

- compute = epochs trained / the grid's epochs (pruned trials stop early; reused ones cost none);
- regret = the grid's best val/acc - the variant's best, in points (negative: it beat the grid).

Goal: within 0.5 pp of the grid's best at <= 0.35 of its compute. Pipelines only, no MLflow: this
measures the search, not the logging. Results are kept in --out (JSON) as each variant ends, so a
rerun resumes; --report-only prints the table from it.

    python benchmarks/bench_pruning.py --out /tmp/bench-pruning.json       # ~35 min on 2 cores
    python benchmarks/bench_pruning.py --trials 4 --seeds 0 --high 64 --epochs 3 --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import optuna  # noqa: E402

from pipelines.config import load_config  # noqa: E402
from pipelines.studies.plan import pruner_named  # noqa: E402
from pipelines.studies.search_space import parse_search, suggest, trial_config  # noqa: E402
from pipelines.studies.search_study import finished_twin, make_sampler  # noqa: E402
from pipelines.studies.worker import EpochReporter  # noqa: E402
from pipelines.training.trainer import execute, prepare  # noqa: E402

PRUNERS = ("none", "median", "successive_halving", "hyperband")
GOAL_REGRET_PP, GOAL_COMPUTE = 0.5, 0.35


def variants(args) -> list[tuple[str, str, str, int, int]]:
    """(name, sampler, pruner, seed, trials); the grid first, once."""
    found = [("grid, no pruner", "grid", "none", 0, len(range(8, args.high + 1, 8)))]
    for seed in args.seeds:
        found.append(("random, no pruner", "random", "none", seed, args.trials))
        found += [(f"tpe + {pruner}", "tpe", pruner, seed, args.trials) for pruner in PRUNERS]
    return found


def run_variant(name: str, sampler: str, pruner: str, seed: int, n_trials: int, args, tmp: str) -> dict:
    base = load_config(None, {"model.backbone": "timm/tf_efficientnet_lite0", "model.weights": "imagenet",
                              "model.freeze": "last_n:2", "data.image_size": args.image_size,
                              "data.max_samples": args.max_samples, "train.epochs": args.epochs,
                              "train.lr": args.lr, "train.checkpoint_dir": f"{tmp}/{name}-{seed}".replace(" ", "")})
    section = {"batch_size": {"low": 8, "high": args.high}, "sampler": sampler, "pruner": pruner,
               "n_trials": n_trials, "seed": seed}
    if sampler != "grid":  # the grid is the batch sizes at the base lr; the searches also choose the lr
        section["lr"] = {"low": args.lr_low, "high": args.lr_high}
    spec = parse_search(section, base)
    study = optuna.create_study(direction=spec.directions[0], sampler=make_sampler(spec),
                                pruner=pruner_named(spec.pruner, args.epochs))
    epochs, reused = [0], [0]

    class Counter:
        def on_epoch_end(self, epoch, metrics):
            epochs[0] += 1

    def objective(trial):
        choice = suggest(trial, spec)
        twin = finished_twin(study, trial)
        if twin is not None:
            reused[0] += 1
            return twin.value
        cfg = trial_config(base, spec, choice)
        return execute(prepare(cfg), listeners=(Counter(), EpochReporter(trial, spec.metric))).fit.best_value

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    best = study.best_trial
    return {"name": name, "seed": seed, "epochs": epochs[0], "wall_s": round(time.perf_counter() - start, 1),
            "best_params": best.params, "best_value": best.value, "trials": len(study.trials),
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials), "reused": reused[0]}


def report(results: list[dict], args) -> None:
    grid = next(r for r in results if r["name"].startswith("grid"))
    print(f"\nLite0 last_n:2 (ImageNet weights), digits {args.max_samples}/split at {args.image_size} px, "
          f"{args.epochs} epochs/trial; batch sizes 8..{args.high} step 8; searches: {args.trials} trials, "
          f"lr log-uniform [{args.lr_low}, {args.lr_high}]; grid at lr {args.lr}: {grid['epochs']} epochs, "
          f"best val/acc {grid['best_value']:.4f} at bs {grid['best_params']['batch_size']}")
    print("| variant | seeds | trials (pruned, reused) | compute vs grid | regret pp (mean, worst) | "
          "goal met | wall s |")
    print("|---|---|---|---|---|---|---|")
    names = list(dict.fromkeys(r["name"] for r in results))
    for name in names:
        rows = [r for r in results if r["name"] == name]
        verdict = "—" if name == grid["name"] else None  # the grid is the reference, not a contender
        compute = [r["epochs"] / grid["epochs"] for r in rows]
        regret = [100 * (grid["best_value"] - r["best_value"]) for r in rows]
        met = sum(c <= GOAL_COMPUTE and g <= GOAL_REGRET_PP for c, g in zip(compute, regret, strict=True))
        print(f"| {name} | {len(rows)} | {statistics.mean(r['trials'] for r in rows):.0f} "
              f"({statistics.mean(r['pruned'] for r in rows):.1f}, {statistics.mean(r['reused'] for r in rows):.1f}) | "
              f"{statistics.mean(compute):.2f} [{min(compute):.2f}-{max(compute):.2f}] | "
              f"{statistics.mean(regret):+.2f}, {max(regret):+.2f} | {verdict or f'{met}/{len(rows)}'} | "
              f"{sum(r['wall_s'] for r in rows):.0f} |")
    print(f"goal: regret <= {GOAL_REGRET_PP} pp at compute <= {GOAL_COMPUTE} (per seed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--max-samples", type=int, default=200)
    parser.add_argument("--high", type=int, default=256, help="the largest batch size (a multiple of 8)")
    parser.add_argument("--trials", type=int, default=12, help="each search's trial budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=0.003, help="the grid's lr")
    parser.add_argument("--lr-low", type=float, default=3e-4)
    parser.add_argument("--lr-high", type=float, default=1e-2)
    parser.add_argument("--only", default="",
                        help="only the variants whose name contains one of these (comma-separated; the grid always)")
    parser.add_argument("--out", default="bench-pruning.json", help="results so far (a rerun resumes)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    setup = {k: v for k, v in vars(args).items() if k not in ("out", "report_only")}
    saved = json.loads(out.read_text()) if out.exists() else {"setup": setup, "results": []}
    if saved["setup"] != setup:
        parser.error(f"{out} holds results of another setup ({saved['setup']}): choose another --out")
    results = saved["results"]
    if not args.report_only:
        with tempfile.TemporaryDirectory() as tmp:
            for name, sampler, pruner, seed, n_trials in variants(args):
                wanted = sampler == "grid" or any(part in name for part in args.only.split(","))
                if not wanted or any(r["name"] == name and r["seed"] == seed for r in results):
                    continue
                results.append(run_variant(name, sampler, pruner, seed, n_trials, args, tmp))
                out.write_text(json.dumps(saved, indent=1))
                print(f"{name} seed {seed}: {results[-1]}", flush=True)
    report(results, args)


if __name__ == "__main__":
    main()

"""What pruning saves in a batch-size search, against the exhaustive grid, in one process.

Every variant searches the same space (batch sizes 8..64 step 8) with the same per-trial config and
seed, so a batch size always trains the same way; only which trials run, and for how long, differs.
Prints epochs spent, wall time and the best batch size each found (goal: the grid's best at
<= 0.4 of its compute). Pipelines only, no MLflow: this measures the search, not the logging.

    .venv/bin/python benchmarks/bench_pruning.py --epochs 4 --max-samples 300
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import optuna  # noqa: E402

from pipelines.config import load_config  # noqa: E402
from pipelines.run import execute, prepare  # noqa: E402
from pipelines.search import EpochReporter, make_pruner, make_sampler  # noqa: E402
from pipelines.search_space import parse_search, suggest, trial_config  # noqa: E402


def run_variant(name: str, sampler: str, pruner: str, n_trials: int, args, tmp: str) -> dict:
    base = load_config(None, {"model.backbone": "timm/tf_efficientnet_lite0", "model.weights": "imagenet",
                              "model.freeze": "last_n:2", "data.image_size": args.image_size,
                              "data.max_samples": args.max_samples, "train.epochs": args.epochs,
                              "train.lr": 0.003, "train.checkpoint_dir": f"{tmp}/{name}"})
    spec = parse_search({"batch_size": {"low": 8, "high": 64}, "sampler": sampler, "pruner": pruner,
                         "n_trials": n_trials, "seed": 0}, base)
    study = optuna.create_study(direction=spec.direction, sampler=make_sampler(spec),
                                pruner=make_pruner(spec, args.epochs))
    epochs = [0]

    class Counter:
        def on_epoch_end(self, epoch, metrics):
            epochs[0] += 1

    def objective(trial):
        cfg = trial_config(base, spec, suggest(trial, spec))
        return execute(prepare(cfg), listeners=(Counter(), EpochReporter(trial, spec.metric))).fit.best_value

    start = time.perf_counter()
    study.optimize(objective, n_trials=n_trials)
    best = study.best_trial
    return {"name": name, "epochs": epochs[0], "wall_s": time.perf_counter() - start,
            "best_bs": best.params["batch_size"], "best_value": best.value,
            "pruned": sum(t.state.name == "PRUNED" for t in study.trials), "trials": len(study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-samples", type=int, default=300)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        variants = [("grid, no pruner", "grid", "none", 8), ("grid + median", "grid", "median", 8),
                    ("grid + hyperband", "grid", "hyperband", 8), ("tpe + median, 4 trials", "tpe", "median", 4),
                    ("tpe + hyperband, 4 trials", "tpe", "hyperband", 4)]
        results = [run_variant(*v, args, tmp) for v in variants]
    grid = results[0]
    print(f"\nLite0 last_n:2, digits {args.max_samples}/split at {args.image_size}px, {args.epochs} epochs/trial, "
          f"batch sizes 8..64 step 8")
    print("| variant | trials (pruned) | epochs | compute vs grid | wall s | best bs | best val/acc | grid's best? |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        same = "yes" if r["best_value"] >= grid["best_value"] - 1e-9 else "no"
        print(f"| {r['name']} | {r['trials']} ({r['pruned']}) | {r['epochs']} | {r['epochs'] / grid['epochs']:.2f} | "
              f"{r['wall_s']:.1f} | {r['best_bs']} | {r['best_value']:.4f} | {same} |")


if __name__ == "__main__":
    main()

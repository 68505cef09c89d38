"""Partial fine-tuning at cached-prefix speed, side by side in one process (no MLflow: the training side).

A `last_n:2` run (Lite0's last two stages and the head train; its first six stages are a fixed prefix)
with the prefix's output cached (`data.feature_cache: memory`, its extraction on the clock) against the same
run through the whole network (`off`), each on a model prepared off the clock, after a warm-up run of each
(first-call kernel costs). Prints the wall-time ratio (goal >= 3x) and the largest difference between the
two runs' per-epoch metrics and test metrics (goal: identical, <= 1e-5 for accuracies).

    .venv/bin/python benchmarks/bench_prefix_cache.py --epochs 10 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

from pipelines.config import load_config  # noqa: E402
from pipelines.training import feature_cache  # noqa: E402
from pipelines.training.trainer import execute, prepare  # noqa: E402


def config(args, cache: str, folder: str, epochs: int):
    return load_config(None, {
        "model.backbone": args.backbone, "model.weights": args.weights, "model.freeze": args.freeze,
        "data.image_size": args.image_size, "data.feature_cache": cache, "train.epochs": epochs,
        "train.checkpoint_dir": folder})


def timed(args, cache: str, folder: str, epochs: int):
    feature_cache.clear()  # the cached run pays for its own extraction
    prepared = prepare(config(args, cache, folder, epochs))
    start = time.perf_counter()
    outcome = execute(prepared)
    return time.perf_counter() - start, outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--freeze", default="last_n:2")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"memory": [], "off": []}
    outcomes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cache in ("memory", "off"):  # warm-up: one epoch each, off the clock
            timed(args, cache, f"{tmp}/warm-{cache}", 1)
        for i in range(args.repeats):
            for cache in ("memory", "off"):
                took, outcomes[cache] = timed(args, cache, f"{tmp}/{cache}{i}", args.epochs)
                seconds[cache].append(took)
            print(f"repeat {i + 1}: cached {seconds['memory'][-1]:.2f}s  uncached {seconds['off'][-1]:.2f}s",
                  flush=True)
    cached, uncached = outcomes["memory"].fit, outcomes["off"].fit
    plan = outcomes["memory"].prepared.feature_cache
    c, u = statistics.median(seconds["memory"]), statistics.median(seconds["off"])
    diffs = {key: max(abs(a[key] - b[key]) for a, b in zip(cached.history, uncached.history, strict=True))
             for key in ("train/loss", "train/acc", "val/loss", "val/acc")}
    diffs.update({key: abs(cached.test[key] - uncached.test[key]) for key in ("test/loss", "test/acc")})
    print(f"\n{args.backbone} ({args.weights}) {args.freeze}, {args.epochs} epochs, digits at {args.image_size}px, "
          f"torch threads {torch.get_num_threads()}; cache: {plan}")
    print(f"cached run {c:.2f}s (extraction {cached.extra['perf/feature_extraction_s']:.2f}s of it), uncached "
          f"{u:.2f}s → {u / c:.2f}x faster (goal >= 3x: {'met' if u / c >= 3 else 'NOT met'})")
    print("largest difference, cached vs uncached: " + ", ".join(f"{k} {v:.2g}" for k, v in diffs.items()))
    same = all(diffs[k] <= 1e-5 for k in ("train/acc", "val/acc", "test/acc"))
    print(f"accuracies at every epoch and on test within 1e-5: {'yes' if same else 'NO'}; "
          f"peak memory cached {cached.extra['perf/peak_memory_mb']:.0f} MB, uncached "
          f"{uncached.extra['perf/peak_memory_mb']:.0f} MB")


if __name__ == "__main__":
    main()

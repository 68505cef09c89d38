"""The frozen-feature cache, side by side in one process (no MLflow: this measures the training side).

(a) one feature-extraction pass over train/val/test, (b) a frozen run with the cache (extraction
included), (c) the same frozen run without it, each on a model prepared off the clock. Prints (b)/(a)
(goal <= 1.05: training the head on cached features costs little beyond the one pass) and (c)/(b),
the cache's speed-up. One extraction pass runs first, off the clock, so no side pays the process's
first-call costs (oneDNN kernels).

    .venv/bin/python benchmarks/bench_feature_cache.py --epochs 10 --repeats 2
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


def config(args, cache: str, folder: str):
    return load_config(None, {
        "model.backbone": args.backbone, "model.weights": args.weights, "model.freeze": "frozen",
        "data.image_size": args.image_size, "data.feature_cache": cache, "train.epochs": args.epochs,
        "train.lr": 3e-3, "train.checkpoint_dir": folder})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    extraction, cached, uncached, parts, accuracy = [], [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        feature_cache.extract(prepare(config(args, "memory", f"{tmp}/warm-up")), batch_size=64)
        for i in range(args.repeats):
            prepared = prepare(config(args, "memory", f"{tmp}/e{i}"))
            start = time.perf_counter()
            feature_cache.extract(prepared, batch_size=64)
            extraction.append(time.perf_counter() - start)
            feature_cache.clear()  # (b) pays for its own extraction
            prepared = prepare(config(args, "memory", f"{tmp}/c{i}"))  # like (a): the model built off the clock
            start = time.perf_counter()
            outcome = execute(prepared)
            cached.append(time.perf_counter() - start)
            parts.append((outcome.fit.extra["perf/feature_extraction_s"], outcome.fit.train_seconds))
            accuracy["cached"] = outcome.fit.test["test/acc"]
            prepared = prepare(config(args, "off", f"{tmp}/u{i}"))
            start = time.perf_counter()
            outcome = execute(prepared)
            uncached.append(time.perf_counter() - start)
            accuracy["uncached"] = outcome.fit.test["test/acc"]
            print(f"repeat {i + 1}: extraction {extraction[-1]:.2f}s  cached run {cached[-1]:.2f}s  "
                  f"uncached run {uncached[-1]:.2f}s", flush=True)
    e, c, u = (statistics.median(x) for x in (extraction, cached, uncached))
    print(f"\n{args.backbone} ({args.weights}) frozen, {args.epochs} epochs, digits at {args.image_size}px, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one extraction pass {e:.2f}s; cached run {c:.2f}s → {c / e:.2f}x a pass "
          f"(goal <= 1.05: {'met' if c / e <= 1.05 else 'NOT met'})")
    extracting, head = (statistics.median(p[k] for p in parts) for k in (0, 1))
    print(f"  the cached run: extraction {extracting:.2f}s (cache key included), the head's {args.epochs} epochs "
          f"+ val + test {head:.2f}s, the rest (seeding, loaders, classification report) "
          f"{c - extracting - head:.2f}s")
    print(f"uncached run {u:.2f}s → the cache is {u / c:.1f}x faster")
    print(f"test/acc cached {accuracy['cached']:.4f}, uncached {accuracy['uncached']:.4f}")


if __name__ == "__main__":
    main()

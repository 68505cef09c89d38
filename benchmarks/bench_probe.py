"""The linear_probe policy against one feature-extraction pass and against the `frozen` policy, in one
process, on the quickstart's data (no MLflow: this measures the training side).

For each dataset: (a) one bare extraction pass over train/val/test (the network's forward in eval mode,
nothing else), (b) a linear_probe run with its own extraction (memory cache cleared first), (c) a frozen
run of the quickstart's epochs on the features (b) left in memory. Prints (b)/(a) (goal <= 1.3: the
probe's fits cost less than a third of one pass) and the test accuracies of (b) and (c) (the probe,
fitted to convergence with its C chosen on validation, should reach at least frozen's). Each model is
prepared off the clock; one extraction pass runs first, off the clock, so no side pays first-call costs.

    .venv/bin/python benchmarks/bench_probe.py --datasets digits fashion-mnist --max-samples 600
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


def config(args, dataset: str, freeze: str, folder: str):
    return load_config(None, {
        "model.backbone": args.backbone, "model.weights": "imagenet", "model.freeze": freeze,
        "data.dataset": dataset, "data.image_size": args.image_size, "data.max_samples": args.max_samples,
        "train.epochs": args.epochs, "train.lr": 3e-3, "train.checkpoint_dir": folder})


def bare_extraction(prepared) -> float:
    """The baseline: the backbone's forward over every split, batch 64, eval mode, in plain PyTorch."""
    model = prepared.backbone.model.eval()
    start = time.perf_counter()
    with torch.inference_mode():
        for split in ("train", "val", "test"):
            loader = torch.utils.data.DataLoader(prepared.data.datasets[split], batch_size=64)
            for x, _ in loader:
                model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion-mnist"])
    parser.add_argument("--image-size", type=int, default=64)  # the quickstart's
    parser.add_argument("--max-samples", type=int, default=600)  # the quickstart's cap on each split
    parser.add_argument("--epochs", type=int, default=4)  # the quickstart's, for the frozen side
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            feature_cache.extract(prepare(config(args, dataset, "frozen", f"{tmp}/warm")), batch_size=64)
            bare, probe, parts, acc = [], [], [], {}
            for i in range(args.repeats):
                bare.append(bare_extraction(prepare(config(args, dataset, "frozen", f"{tmp}/b{i}"))))
                feature_cache.clear()  # the probe pays for its own extraction
                prepared = prepare(config(args, dataset, "linear_probe", f"{tmp}/p{i}"))
                start = time.perf_counter()
                outcome = execute(prepared)
                probe.append(time.perf_counter() - start)
                parts.append((outcome.fit.extra["perf/feature_extraction_s"], outcome.probe.fit_seconds))
                acc["linear_probe"], chosen = outcome.fit.test["test/acc"], outcome.probe.c
                frozen = execute(prepare(config(args, dataset, "frozen", f"{tmp}/f{i}")))  # features from memory
                acc["frozen"] = frozen.fit.test["test/acc"]
                print(f"{dataset} repeat {i + 1}: bare extraction {bare[-1]:.2f}s, linear_probe run {probe[-1]:.2f}s",
                      flush=True)
            a, b = statistics.median(bare), statistics.median(probe)
            extraction, fits = (statistics.median(p[k] for p in parts) for k in (0, 1))
            lines.append(f"| {dataset} | {len(prepared.data.datasets['train'])} | {a:.2f} | {b:.2f} | {b / a:.2f} "
                         f"({'met' if b / a <= 1.3 else 'NOT met'}) | {extraction:.2f} | {fits:.2f} | {chosen:g} | "
                         f"{acc['linear_probe']:.4f} | {acc['frozen']:.4f} |")
    print(f"\n{args.backbone} (ImageNet), {args.image_size}px, at most {args.max_samples} images a split, "
          f"frozen {args.epochs} epochs, torch threads {torch.get_num_threads()}\n")
    print("| dataset | train images | bare extraction s | linear_probe run s | ratio (goal <= 1.3) | its extraction s "
          "| its fits s | chosen C | test acc linear_probe | test acc frozen |")
    print("|" + "---|" * 10)
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Wall time of one comparison run by 1 worker, then by N workers at once, on one machine.

Each variant gets a fresh sqlite tracking store and journal storage in a tmp folder; every worker is a
`python -m freezeframe compare` process with one torch thread (OMP_NUM_THREADS=1), as several workers
on a small machine would be run. The grid: Lite0 (bundled ImageNet weights) frozen over 6 seeds on
digits, so each worker also pays for its own feature extraction (the cache is per process;
`--feature_cache off` trains every arm through the backbone).

    .venv/bin/python benchmarks/bench_compare_workers.py --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def experiment(folder: Path, args) -> Path:
    path = folder / "grid.yaml"
    path.write_text(
        f"model: {{backbone: {args.backbone}, weights: imagenet, freeze: {args.freeze}}}\n"
        f"data: {{image_size: {args.image_size}, feature_cache: '{args.feature_cache}'}}\n"
        f"train: {{epochs: {args.epochs}, lr: 0.003, checkpoint_dir: {folder / 'checkpoints'}}}\n"
        "tracking: {log_model: false}\n"
        f"compare: {{name: bench, seeds: {list(range(args.arms))}}}\n")
    return path


def run(workers: int, args) -> tuple[float, list[int]]:
    """Seconds from the first start to the last exit, and how many arms each worker ran."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = experiment(folder, args)
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "TQDM_DISABLE": "1",
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
        command = [sys.executable, "-m", "freezeframe", "compare", "--experiment", str(path),
                   "--storage", f"journal:{folder / 'optuna.journal'}"]
        start = time.perf_counter()
        procs = [subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(workers)]
        outputs = [p.communicate()[0] for p in procs]
        seconds = time.perf_counter() - start
        for p, out in zip(procs, outputs, strict=True):
            if p.returncode != 0:
                raise SystemExit(f"a worker failed:\n{out[-2000:]}")
        return seconds, [sum(line.startswith("[trial ") for line in out.splitlines()) for out in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--arms", type=int, default=6)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--freeze", default="frozen")
    parser.add_argument("--image_size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--feature_cache", default="memory", help="memory (the default) | off")
    args = parser.parse_args()
    one, split_one = run(1, args)
    many, split_many = run(args.workers, args)
    print(f"| workers | wall s | arms per worker |\n|---|---|---|\n| 1 | {one:.1f} | {split_one} |\n"
          f"| {args.workers} | {many:.1f} | {split_many} |")
    print(f"speed-up with {args.workers} workers: {one / many:.2f}x ({args.arms} arms, {args.backbone} "
          f"{args.freeze}, {args.image_size} px, {args.epochs} epochs, feature cache {args.feature_cache}, "
          "one torch thread per worker)")


if __name__ == "__main__":
    main()

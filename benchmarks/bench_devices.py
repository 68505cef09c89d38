"""One run on 1 and on N processes (`train.devices`): time and agreement, each through `freezeframe train`.

    python benchmarks/bench_devices.py --devices 2 [--backbone timm/tf_efficientnet_lite0 --weights imagenet]

Each setting runs `python -m freezeframe train` in a subprocess (the launcher starts N ranks under
torch.distributed.run; gloo on the CPU, NCCL on CUDA) into its own sqlite store, then reads the run back:
wall time of the command (start-up included), the median epoch after the first (perf/epoch_s), the
training throughput, and the largest per-epoch difference from the one-process run in val/acc and
val/loss. On CPU the N processes share the machine's cores (each takes cores / N threads), so the ratio
measures what data-parallel costs there, not a speed-up; on N GPUs it is the scaling efficiency.
BatchNorm in training mode normalises each process's own batch_size / N images (as plain DDP does), so a
BatchNorm network's numbers move a little; a LayerNorm one (--backbone timm/test_convnext --weights none)
should agree to float precision.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(devices: int, args: argparse.Namespace, folder: Path) -> dict:
    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{folder / f'devices{devices}.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [sys.executable, "-m", "freezeframe", "train", "--experiment", str(ROOT / "experiments/quickstart.yaml"),
           "--backbone", args.backbone, "--weights", args.weights, "--freeze", args.freeze,
           "--epochs", str(args.epochs), "--batch_size", str(args.batch_size), "--image_size", str(args.image_size),
           "--max_samples", str(args.max_samples), "--devices", str(devices), "--log_model", "false",
           "--set", f"train.checkpoint_dir={folder / f'checkpoints{devices}'}", "--set", "tracking.log_plots=false"]
    tick = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:  # the run's own account, not only CalledProcessError's exit code
        raise SystemExit(f"{devices} device(s): exit {done.returncode}\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - tick
    client = MlflowClient(store)
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = {key: [m.value for m in sorted(client.get_metric_history(found.info.run_id, key), key=lambda m: m.step)]
               for key in ("perf/epoch_s", "perf/images_per_s", "val/acc", "val/loss")}
    return {"devices": devices, "wall": wall, "epoch_s": statistics.median(history["perf/epoch_s"][1:] or
                                                                            history["perf/epoch_s"]),
            "images_per_s": statistics.median(history["perf/images_per_s"][1:] or history["perf/images_per_s"]),
            "val_acc": history["val/acc"], "val_loss": history["val/loss"], "test_acc": found.data.metrics["test/acc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--backbone", default="timm/tf_efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--freeze", default="unfrozen")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--max_samples", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, many = (run(n, args, Path(tmp)) for n in (1, args.devices))
    print(f"{args.backbone} ({args.weights}) · {args.freeze} · {args.max_samples} images at {args.image_size} px · "
          f"global batch {args.batch_size} · {args.epochs} epochs · {os.cpu_count()} CPU cores")
    print("| devices | command wall s | epoch s (median after the first) | train img/s | "
          "vs 1 process | max abs. Δ val/acc | max abs. Δ val/loss | test/acc |")
    print("|---|---|---|---|---|---|---|---|")
    for row in (one, many):
        dacc = max(abs(a - b) for a, b in zip(row["val_acc"], one["val_acc"], strict=True))
        dloss = max(abs(a - b) for a, b in zip(row["val_loss"], one["val_loss"], strict=True))
        print(f"| {row['devices']} | {row['wall']:.1f} | {row['epoch_s']:.2f} | {row['images_per_s']:.0f} | "
              f"{row['images_per_s'] / one['images_per_s']:.2f}× | {dacc:.4f} | {dloss:.4f} | {row['test_acc']:.4f} |")


if __name__ == "__main__":
    main()

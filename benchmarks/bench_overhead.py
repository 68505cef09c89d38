"""freezeframe's overhead against a bare PyTorch loop, run alternately in one process.

Both sides train the same backbone with the same weights, freeze policy, data, batches and epochs,
evaluate on val every epoch and on test at the end. freezeframe adds torchmetrics, checkpoints,
progress bars and MLflow logging (into a tmp sqlite store); the model export (log_model) is timed
apart since it is optional. Prints the median wall-time ratio (goal <= 1.03), MLflow's share (the
time the run waits on MLflow; the background writer's work is printed apart) and the fixed costs.
`--system-metrics compare` runs freezeframe with MLflow's system metrics on (the default) and off
each repeat, to price the sampling thread.

    .venv/bin/python benchmarks/bench_overhead.py --freeze frozen --epochs 3 --repeats 3
    .venv/bin/python benchmarks/bench_overhead.py --system-metrics compare --epochs 2 --repeats 2
    .venv/bin/python benchmarks/bench_overhead.py --plots off --epochs 8 --repeats 3
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

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import tracking  # noqa: E402,F401 - MLflow environment defaults
from freezeframe.training_run import prepare_training, train_in_run  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.data.loaders import (  # noqa: E402
    Preprocessing,  # noqa: E402
    build_data,
    make_loaders,
)
from pipelines.data.sources import load_dataset  # noqa: E402
from pipelines.models import lite_wheels  # noqa: E402
from pipelines.training.device import seed_everything  # noqa: E402

OTHER = "other (run start and end, test pass, classification report)"


def bare_pytorch(args) -> tuple[float, float, float]:
    """What a practitioner would write by hand: no metrics library, no checkpoints, no tracking.
    (wall seconds, seconds in its epochs: train + val, as freezeframe's perf/epoch_s counts them, and
    CPU seconds of all threads: on a shared machine whose neighbours steal time, CPU time varies less
    than wall time, so its ratio is printed beside the wall one)"""
    start, cpu = time.perf_counter(), time.process_time()
    seed_everything(0)
    raw = load_dataset("digits")
    model = lite_wheels.load_into(timm.create_model("tf_efficientnet_lite0", drop_rate=0.0), "tf_efficientnet_lite0")
    model.reset_classifier(len(raw.class_names))
    if args.freeze == "frozen":
        for name, p in model.named_parameters():
            p.requires_grad = name.startswith("classifier.")
    prep = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    data = build_data(load_config(None, _overrides(args)).data, raw, prep)
    loaders = make_loaders(data, args.batch_size, 0, seed=0)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    criterion = nn.CrossEntropyLoss()
    epochs_s = 0.0
    for _ in range(args.epochs):
        tick = time.perf_counter()
        model.train(args.freeze != "frozen")  # frozen: BatchNorm statistics stay fixed
        for x, y in loaders["train"]:
            loss = criterion(model(x.to(memory_format=torch.channels_last)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _accuracy(model, loaders["val"])
        epochs_s += time.perf_counter() - tick
    _accuracy(model, loaders["test"])
    return time.perf_counter() - start, epochs_s, time.process_time() - cpu


def _accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for x, y in loader:
            correct += (model(x.to(memory_format=torch.channels_last)).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def _overrides(args) -> dict:
    return {"model.freeze": args.freeze, "train.epochs": args.epochs, "train.batch_size": args.batch_size,
            "train.lr": args.lr, "train.scheduler": "constant", "train.weight_decay": 0.0,
            "data.image_size": args.image_size, "data.max_samples": args.max_samples,
            "tracking.log_model": False, "tracking.experiment_name": "bench",
            "tracking.log_plots": getattr(args, "plots", "on") == "on",
            "data.feature_cache": "off"}  # like for like: benchmarks/bench_feature_cache.py measures the cache


def freezeframe_run(args, workdir: Path, repeat: int | str, system_metrics: bool = True) -> tuple[float, float, dict]:
    """(wall seconds, seconds spent in MLflow logging, the fixed costs by kind) for one tracked run.

    One store for all repeats, as for a user: its one-off schema creation happens in the warm-up.
    """
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    cfg = load_config(None, {**_overrides(args), "train.checkpoint_dir": str(workdir / f"ckpt{repeat}"),
                             "tracking.system_metrics": system_metrics})
    start, cpu = time.perf_counter(), time.process_time()
    prepared = prepare_training(cfg)
    prepared_s = time.perf_counter() - start
    done = train_in_run(prepared, entry_point="benchmark", attach=False)
    wall = time.perf_counter() - start
    costs_cpu = time.process_time() - cpu
    fit = done.outcome.fit
    costs = {"prepare": prepared_s, **{f"mlflow {k}": v for k, v in done.logging_breakdown.items()},
             "checkpoints": fit.extra["perf/checkpoint_s"],
             OTHER: wall - prepared_s - fit.train_seconds - done.logging_seconds,
             "epochs": sum(row["perf/epoch_s"] for row in fit.history), "cpu": costs_cpu,
             **{f"background {k}": v for k, v in done.background_breakdown.items()}}
    print(f"  freezeframe (system metrics {_on(system_metrics)}): prepare {prepared_s:.2f}s, "
          f"training loop {fit.train_seconds:.2f}s, mlflow {done.logging_seconds:.2f}s, "
          f"rest {costs[OTHER]:.2f}s")
    return wall, done.logging_seconds, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--freeze", default="frozen", choices=["frozen", "unfrozen"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--max-samples", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plots", default="on", choices=["on", "off"],
                        help="tracking.log_plots: off prices the three figures (their CPU is the biggest fixed cost)")
    parser.add_argument("--system-metrics", default="on", choices=["on", "off", "compare"],
                        help="tracking.system_metrics for the freezeframe runs; compare: both, each repeat")
    args = parser.parse_args()
    variants = {"on": [True], "off": [False], "compare": [True, False]}[args.system_metrics]
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow's ./mlruns artifacts land in tmp
        freezeframe_run(args, Path(tmp), repeat=-1)  # first-call costs (imports, DB schema) off the clock
        bare: list[float] = []
        bare_epochs: list[float] = []
        bare_cpu_s: list[float] = []
        ours: dict[bool, list[float]] = {v: [] for v in variants}
        logging_s: dict[bool, list[float]] = {v: [] for v in variants}
        costs: dict[bool, list[dict]] = {v: [] for v in variants}
        for i in range(args.repeats):
            for side in ("ours", "bare") if i % 2 else ("bare", "ours"):  # neither side always runs second
                if side == "bare":
                    wall, epochs_s, cpu_s = bare_pytorch(args)
                    bare.append(wall)
                    bare_epochs.append(epochs_s)
                    bare_cpu_s.append(cpu_s)
                    continue
                for variant in variants:
                    wall, logged, cost = freezeframe_run(args, Path(tmp), repeat=f"{i}-{variant}",
                                                         system_metrics=variant)
                    ours[variant].append(wall)
                    logging_s[variant].append(logged)
                    costs[variant].append(cost)
            print(f"repeat {i + 1}: bare {bare[-1]:.2f}s  " + "  ".join(
                f"freezeframe (system metrics {_on(v)}) {ours[v][-1]:.2f}s, mlflow logging {logging_s[v][-1]:.2f}s"
                for v in variants), flush=True)
    b = statistics.median(bare)
    print(f"\n{args.freeze}, {args.epochs} epochs, digits at {args.image_size}px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, plots {args.plots}")
    for variant in variants:
        o, logged = statistics.median(ours[variant]), statistics.median(logging_s[variant])
        print(f"system metrics {_on(variant)}: median wall: bare PyTorch {b:.2f}s, freezeframe {o:.2f}s → "
              f"ratio {o / b:.3f} (goal <= 1.03: {_met(o / b <= 1.03)}); MLflow logging {logged:.2f}s = "
              f"{logged / o:.1%} of the run (goal <= 1%: {_met(logged / o <= 0.01)})")
        median = {k: statistics.median(c[k] for c in costs[variant]) for k in costs[variant][0]}
        per_run = [k for k in median if k.startswith("mlflow ") and k != "mlflow epochs"]  # paid once, not per epoch
        fixed = median["prepare"] + sum(median[k] for k in per_run)
        epochs, cpu = median.pop("epochs"), median.pop("cpu")
        bare_cpu = statistics.median(bare_cpu_s)
        print(f"  CPU time (all threads): bare {bare_cpu:.2f}s, freezeframe {cpu:.2f}s → {cpu / bare_cpu:.3f}")
        print(f"  the epochs themselves (train + val): bare {statistics.median(bare_epochs):.2f}s, freezeframe "
              f"{epochs:.2f}s → {epochs / statistics.median(bare_epochs):.3f}; the rest of the gap is per-run cost:")
        on_path = {k: v for k, v in median.items() if not k.startswith("background ")}
        print(f"  fixed per-run cost {fixed:.2f}s: " + ", ".join(f"{k} {v:.2f}s" for k, v in on_path.items())
              + f"; bare loop's whole run {b:.2f}s")
        print("  off the run's path, on the background writer: "
              + ", ".join(f"{k.removeprefix('background ')} {v:.2f}s" for k, v in median.items() if k not in on_path))
    if len(variants) == 2:
        on, off = (statistics.median(ours[v]) for v in (True, False))
        print(f"system metrics on / off: {on / off:.3f}")


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _on(flag: bool) -> str:
    return "on" if flag else "off"

if __name__ == "__main__":
    main()

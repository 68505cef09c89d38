"""Why layer_decay (and, less, unfrozen) lose on small data: BatchNorm's running statistics (issue 22, part 6).

For each policy: train as the issue measured it (digits, Lite0, 200 images a split, 64 px, 2 epochs, lr 3e-3),
then evaluate the same weights three ways: with the running statistics (what a run reports), with each val
batch's own statistics, and with running statistics recomputed on the train images afterwards (PyTorch's
torch.optim.swa_utils.update_bn). A large gap between the first and the others points at the statistics,
not at the weights.

    .venv/bin/python benchmarks/investigate_bn_stats.py unfrozen layer_decay:0.9 layer_decay:0.7 last_n:2
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from torch.optim.swa_utils import update_bn  # noqa: E402

from pipelines.config import load_config  # noqa: E402
from pipelines.data.loaders import make_loaders  # noqa: E402
from pipelines.training.stepper import evaluate  # noqa: E402
from pipelines.training.trainer import execute, prepare  # noqa: E402


def val_acc(model, loader, batch_statistics: bool = False) -> float:
    if not batch_statistics:
        return evaluate(model, {"val": loader}, 10, torch.device("cpu"))["val"].metrics["val/acc"]
    model.train()  # BatchNorm normalises each batch by its own statistics (nothing trains: no grad, no step)
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return hits / len(loader.dataset)


def main(policies: list[str]) -> None:
    print("| policy | train/acc | val/acc (running stats) | val/acc (batch stats) | val/acc (recalibrated) |")
    print("|---|---|---|---|---|")
    for policy in policies:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = prepare(load_config(None, {
                "model.backbone": "timm/tf_efficientnet_lite0", "model.weights": "imagenet", "model.freeze": policy,
                "data.image_size": 64, "data.max_samples": 200, "train.epochs": 2, "train.lr": 0.003,
                "train.checkpoint_dir": tmp}))
            fit = execute(prepared).fit
        model, loaders = prepared.backbone.model, make_loaders(prepared.data, 32, 0, 0)
        running, batch = val_acc(model, loaders["val"]), val_acc(model, loaders["val"], batch_statistics=True)
        # update_bn resets every BatchNorm layer, frozen ones included (which freezeframe holds in eval): a
        # policy with frozen stages loses their ImageNet statistics here, so read this column for the others
        update_bn((x for x, _ in loaders["train"]), model)
        print(f"| {policy} | {fit.history[-1]['train/acc']:.3f} | {running:.3f} | {batch:.3f} | "
              f"{val_acc(model, loaders['val']):.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["unfrozen", "layer_decay:0.9", "layer_decay:0.7"])

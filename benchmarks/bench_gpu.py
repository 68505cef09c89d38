"""GPU readiness in one command (<= 8 min on one GPU): freezeframe on CUDA against a bare PyTorch loop, same process.

1. train: Lite0 full fine-tune at 224 px with AMP (bf16 where supported, else fp16 and a GradScaler) and
   channels_last: steady train images/s (median epoch after the first) of a hand-written loop and of
   pipelines.training.trainer.execute, on the same loaders; ratio = freezeframe / bare (1.00: no overhead).
2. cache: Lite0 frozen with the feature cache: extraction images/s of a hand-written inference loop and of
   the product's frozen run (its perf/feature_extraction_s), alternated, best of two.
3. search: 6 trials through `freezeframe search` in-process (tmp sqlite MLflow store and Optuna storage),
   batch size 8..8192 at 224 px, a space that exceeds memory on purpose so the ceiling probe must cut it.
   A Lite0 training step at 224 px saves ~41 MB of activations per image under bf16 autocast (~82 MB in
   float32; counted with torch's saved-tensor hooks), ~45 MB with the probe's 10% margin: ~350 images fit
   in 16 GB, ~1,800 in 80 GB, ~3,100 in an H200's 139 GiB, while 8192 needs ~370 GB. The ceiling falls
   inside the space on all of them even if the estimate is 2x off. Trials step on at most
   search_samples images (digits is small), far below the ceiling: the probe is what meets the limit.

4. scaling: with 2 or more GPUs, the same Lite0 fine-tune as one run on 1, 2, 4, ... GPUs (`train.devices`,
   data-parallel under torch.distributed.run, NCCL), each through `freezeframe train` (benchmarks/bench_devices.py):
   train images/s at the global batch, and the scaling efficiency img/s(N) / (N x img/s(1)). On one GPU it says
   so and measures nothing. (--cpu-smoke: 1 and 2 CPU processes with gloo, tiny.)

A failing part is a FAILED row with its reason, the others go on, the exit code is 1. Without CUDA it says so
and exits 0; --cpu-smoke runs every part on the CPU at tiny sizes (code paths only, the figures mean nothing).

    benchmarks/gpu.sh --out bench-gpu.md
    .venv/bin/python benchmarks/bench_gpu.py --cpu-smoke
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import timm  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

import tracking  # noqa: E402,F401 - MLflow environment defaults
from benchmarks.bench_devices import run as run_on_devices  # noqa: E402
from pipelines.config import load_config  # noqa: E402
from pipelines.data.loaders import Preprocessing, build_data, make_loaders  # noqa: E402
from pipelines.data.sources import load_dataset  # noqa: E402
from pipelines.data.splits import SPLITS  # noqa: E402
from pipelines.errors import first_line  # noqa: E402
from pipelines.models import lite_wheels  # noqa: E402
from pipelines.training import feature_cache  # noqa: E402
from pipelines.training.device import (  # noqa: E402
    free_memory,
    in_use_mb,  # noqa: E402
    seed_everything,
)
from pipelines.training.engine import steady_images_per_s  # noqa: E402
from pipelines.training.trainer import execute, prepare  # noqa: E402

NO_CUDA = "bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False): nothing measured"
GPU = dict(backbone="tf_efficientnet_lite0", weights="imagenet", image=224, samples=0, batch=128, epochs=8,
           search_image=224, search_high=8192, search_samples=400, search_epochs=2, headroom_mb=0)
# tests/conftest.py's tiny model; the search at 128 px as in tests/test_search_budget.py: a step needs
# ~+50 MB at batch 8 and ~+580 MB at 128, so a CPU guard of +300 MB cuts 8..128
SMOKE = dict(backbone="test_resnet", weights="none", image=32, samples=24, batch=8, epochs=2,
             search_image=128, search_high=128, search_samples=24, search_epochs=1, headroom_mb=300)


@dataclass
class Row:
    part: str
    what: str
    bare: str = "—"
    ours: str = "—"
    ratio: str = "—"
    notes: str = ""
    failed: bool = False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The product's rule (pipelines/training/device.py): AMP on CUDA only, bf16 where the GPU has it."""
    return None if device.type != "cuda" else torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device):
    return torch.autocast(device.type, dtype=amp_dtype(device) or torch.bfloat16, enabled=device.type == "cuda")


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, memory_format=torch.channels_last, non_blocking=device.type == "cuda")


def seconds_since(tick: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA runs asynchronously: the clock stops when its work is done
    return time.perf_counter() - tick


def overrides(args, freeze: str, epochs: int, samples: int, tmp: str) -> dict:
    s = args.sizes
    return {"model.backbone": f"timm/{s['backbone']}", "model.weights": s["weights"], "model.freeze": freeze,
            "data.image_size": s["image"], "data.max_samples": samples, "data.num_workers": args.workers,
            "train.epochs": epochs, "train.batch_size": s["batch"], "train.lr": 1e-3, "train.scheduler": "constant",
            "train.device": args.device.type, "train.checkpoint_dir": f"{tmp}/checkpoints",
            "tracking.log_model": False, "tracking.experiment_name": "bench-gpu"}


def bare_setup(cfg, device: torch.device, classes: bool = True):
    """What a practitioner writes: timm's model (Lite0: the bundled ImageNet weights), timm's data config."""
    seed_everything(cfg.seed)
    raw, name = load_dataset(cfg.data.dataset), cfg.model.backbone.removeprefix("timm/")
    model = timm.create_model(name, drop_rate=0.0)
    if cfg.model.weights == "imagenet":
        lite_wheels.load_into(model, name)
    model.reset_classifier(len(raw.class_names) if classes else 0)  # 0: pooled features, what the cache keeps
    dc = timm.data.resolve_model_data_config(model)
    data = build_data(cfg.data, raw, Preprocessing(dc["mean"], dc["std"], dc["interpolation"]))
    return model.to(device, memory_format=torch.channels_last), data


def bare_train(cfg, device: torch.device) -> tuple[float, float, float]:
    """(steady train images/s, test accuracy, wall s). No per-batch .item(): one sync per epoch."""
    start = time.perf_counter()
    model, data = bare_setup(cfg, device)
    loaders = make_loaders(data, cfg.train.batch_size, cfg.data.num_workers, cfg.seed, pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device) == torch.float16)  # bf16 needs none
    criterion, history = nn.CrossEntropyLoss(), []
    for _ in range(cfg.train.epochs):
        model.train()
        tick = time.perf_counter()
        for x, y in loaders["train"]:
            with autocast(device):
                loss = criterion(model(to_device(x, device)), y.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        history.append({"perf/images_per_s": len(loaders["train"].dataset) / seconds_since(tick, device)})
        bare_accuracy(model, loaders["val"], device)
    return steady_images_per_s(history), bare_accuracy(model, loaders["test"], device), time.perf_counter() - start


def bare_accuracy(model: nn.Module, loader: DataLoader, device: torch.device) -> float:
    model.eval()
    correct = torch.zeros((), device=device)
    with torch.inference_mode(), autocast(device):
        for x, y in loader:
            correct += (model(to_device(x, device)).argmax(1) == y.to(device)).sum()
    return correct.item() / len(loader.dataset)


def bare_extract(model: nn.Module, data, batch_size: int, workers: int, device: torch.device) -> float:
    """Seconds for one inference pass over every split, the features back on the CPU as the cache keeps them."""
    tick = time.perf_counter()
    model.eval()
    with torch.inference_mode(), autocast(device):
        for split in SPLITS:
            loader = DataLoader(data.datasets[split], batch_size=batch_size, num_workers=workers,
                                pin_memory=device.type == "cuda")
            torch.cat([model(to_device(x, device)).float().cpu() for x, _ in loader])
    return seconds_since(tick, device)


def part_train(args, tmp: str) -> Row:
    s = args.sizes
    row = Row("train", f"{s['backbone']} unfrozen {s['image']} px, AMP {args.amp}, channels_last, batch {s['batch']}")
    bare, bare_acc, bare_wall = bare_train(load_config(None, overrides(args, "unfrozen", s["epochs"], s["samples"],
                                                                       tmp)), args.device)
    # the budget guard: where the bare side took over 15% of it, freezeframe gets fewer epochs (2 at least)
    epochs = min(s["epochs"], max(2, int(s["epochs"] * (0.3 * args.budget_s - bare_wall) / bare_wall)))
    free_memory()
    tick = time.perf_counter()
    done = execute(prepare(load_config(None, overrides(args, "unfrozen", epochs, s["samples"], tmp))))
    args.rate = ours = done.fit.extra["perf/steady_images_per_s"]  # sizes the search's trials
    row.bare, row.ours, row.ratio = f"{bare:.0f}", f"{ours:.0f}", f"{ours / bare:.2f}"
    row.notes = (f"bare/freezeframe: epochs {s['epochs']}/{epochs}, wall {bare_wall:.1f}/"
                 f"{time.perf_counter() - tick:.1f} s, test acc {bare_acc:.3f}/{done.fit.test['test/acc']:.3f}")
    return row


def part_cache(args, tmp: str) -> Row:
    s = args.sizes
    row = Row("cache", f"{s['backbone']} frozen {s['image']} px, feature extraction over train+val+test")
    cfg = load_config(None, overrides(args, "frozen", 2, s["samples"], tmp))
    model, data = bare_setup(cfg, args.device, classes=False)
    images, batch = sum(len(d) for d in data.datasets.values()), max(64, s["batch"])  # the run's extraction batch
    bare, ours = [], []
    for _ in range(2):  # alternated, best of two: each side's first pass pays for its warm-up
        bare.append(images / bare_extract(model, data, batch, args.workers, args.device))
        feature_cache.clear()  # each frozen run extracts: none reuses the last one's features
        done = execute(prepare(cfg))
        ours.append(images / done.fit.extra["perf/feature_extraction_s"])
    row.bare, row.ours, row.ratio = f"{max(bare):.0f}", f"{max(ours):.0f}", f"{max(ours) / max(bare):.2f}"
    row.notes = f"{images} images, batch {batch}; head on the features: test acc {done.fit.test['test/acc']:.3f}"
    return row


def search_experiment(args, tmp: str) -> tuple[str, int]:
    """The experiment file, its trials' images per split scaled down where the GPU is slow."""
    import yaml

    s, samples = args.sizes, args.sizes["search_samples"]
    trial_s = 10 + 3 * samples * s["search_epochs"] / max(args.rate, 1.0)  # set-up + images seen / measured rate
    left = args.deadline - time.perf_counter() - 60  # 60 s: the ceiling probe
    if 6 * trial_s > left:
        samples = max(min(samples, 40), int(samples * left / (6 * trial_s)))
    sections: dict = {"search": {"study_name": "bench-gpu", "batch_size": {"low": 8, "high": s["search_high"]},
                                 "n_trials": 6, "probe_memory": True}}
    flat = {**overrides(args, "unfrozen", s["search_epochs"], samples, tmp), "data.image_size": s["search_image"]}
    if s["headroom_mb"]:  # the CPU guard, so that the ceiling cuts the space on the CPU too
        flat["train.memory_limit_mb"] = int(in_use_mb(args.device) + s["headroom_mb"])
    for key, value in flat.items():
        section, leaf = key.split(".", 1)
        sections.setdefault(section, {})[leaf] = value
    Path(f"{tmp}/search.yaml").write_text(yaml.safe_dump(sections))
    return f"{tmp}/search.yaml", samples


def part_search(args, tmp: str) -> Row:
    import mlflow
    import optuna

    from freezeframe.cli import main
    from pipelines.studies.keys import REASON_ATTR, TWIN_ATTR
    from pipelines.studies.search_study import ceilings_in
    from pipelines.studies.storage import make_storage

    s, (path, samples) = args.sizes, search_experiment(args, tmp)
    row = Row("search", f"6 trials, {s['backbone']} unfrozen {s['search_image']} px, batch 8..{s['search_high']}, "
                        f"{samples} images per split")
    os.environ["MLFLOW_TRACKING_URI"] = uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    storage = f"sqlite:///{tmp}/optuna.db"
    timeout = max(30, int(args.deadline - time.perf_counter() - 60))  # a trial started in time runs to its end
    code = main(["search", "--experiment", path, "--storage", storage, "--timeout", str(timeout)])
    store = make_storage(storage)
    study = optuna.load_study(study_name="bench-gpu", storage=store)
    states = collections.Counter(t.state.name for t in study.trials)
    reasons = [t.user_attrs.get(REASON_ATTR, "?") for t in study.trials if t.state.name == "FAIL"]
    reused = sum(TWIN_ATTR in t.user_attrs for t in study.trials)  # a finished trial's params drawn again
    row.notes = (", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "no trials") + \
        f" ({reused} reused)" * bool(reused)
    for c in ceilings_in(study, store).values():  # one probe: one backbone and policy
        fit_all = "" if c["ceiling"] < s["search_high"] else " (all of the space fits: raise search_high)"
        row.bare, row.ours = f"ceiling {c['ceiling']}{fit_all}", f"probe {c['seconds']:.1f} s"
        row.notes += f"; {len(c['probes'])} probe steps, limit {c['limit_mb']:.0f} MB on {c['device']}"
    if code or reasons:
        row.failed = True
        row.notes = f"freezeframe search exited {code}: {reasons[0] if reasons else 'its error is above'}; {row.notes}"
    return row


def part_scaling(args, tmp: str) -> Row:
    """One run on 1, 2, 4, ... devices: images/s at the same global batch, and the scaling efficiency."""
    count = 2 if args.cpu_smoke else torch.cuda.device_count()
    if count < 2:
        return Row("scaling", f"{count} GPU here", notes="multi-GPU scaling needs 2 or more GPUs: nothing measured")
    sizes = args.sizes
    counts = [n for n in (1, 2, 4, 8, 16) if n <= count and sizes["batch"] % n == 0]
    setting = argparse.Namespace(backbone=f"timm/{sizes['backbone']}", weights=sizes["weights"], freeze="unfrozen",
                                 epochs=max(2, sizes["epochs"] // 4), batch_size=sizes["batch"],
                                 image_size=sizes["image"], max_samples=sizes["samples"] or 4000)
    rates = {n: run_on_devices(n, setting, Path(tmp))["images_per_s"] for n in counts}
    last = counts[-1]
    efficiency = rates[last] / (last * rates[1])
    return Row("scaling", f"{sizes['backbone']} unfrozen, global batch {sizes['batch']}, 1 → {last} devices "
               "(bare: 1 device, freezeframe: N)", f"{rates[1]:.0f}",
               f"{rates[last]:.0f}", f"{efficiency:.2f}",
               notes="efficiency = img/s(N) / (N x img/s(1)); " + ", ".join(f"{n}: {r:.0f}" for n, r in rates.items()))


def guarded(part, args, tmp: str, minimum_s: float) -> Row:
    """A part's failure is its row, not the end of the run: each CUDA-only error shows up in its own part."""
    name = part.__name__.removeprefix("part_")
    if args.deadline - time.perf_counter() < minimum_s:
        return Row(name, "SKIPPED", notes=f"under {minimum_s:.0f} s of --budget-s left")
    tick = time.perf_counter()
    try:
        row = part(args, tmp)
    except Exception as exc:  # noqa: BLE001 - reported in the table and in the exit code
        row = Row(name, "—", notes=f"{type(exc).__name__}: {first_line(exc)}", failed=True)
    finally:
        free_memory()  # an out-of-memory part must not starve the next one
    row.notes += f"; {time.perf_counter() - tick:.0f} s"
    print(f"{name}: {'FAILED' if row.failed else 'done'} ({row.notes})", flush=True)
    return row


def table(args, rows: list[Row]) -> str:
    device = "CPU smoke run (--cpu-smoke): tiny sizes, the figures mean nothing"
    if not args.cpu_smoke:
        props = torch.cuda.get_device_properties(args.device)
        # sm < 8.0 has no bf16 units: is_bf16_supported() still says yes there (emulation), so AMP is slow bf16
        device = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm {props.major}.{props.minor}), "
                  f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    lines = [f"# freezeframe on the GPU: {device}", "", f"torch {torch.__version__}, timm {timm.__version__}, "
             f"AMP {args.amp}, channels_last, {args.workers} loader workers; ratio = freezeframe / bare", "",
             "| part | what | bare img/s | freezeframe img/s | ratio | notes |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.part} | {r.what} | {r.bare} | {r.ours} | {r.ratio} | {'**FAILED** ' * r.failed}{r.notes} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-gpu.md", help="the Markdown table is written there too")
    parser.add_argument("--budget-s", type=float, default=420, help="the whole run's time budget (seconds)")
    parser.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) // 2), help="data loader workers")
    parser.add_argument("--cpu-smoke", action="store_true", help="every part on the CPU at tiny sizes")
    args = parser.parse_args()
    if not args.cpu_smoke and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    args.device = torch.device("cpu" if args.cpu_smoke else "cuda")
    args.sizes, args.rate, args.workers = (SMOKE, 0.0, 0) if args.cpu_smoke else (GPU, 0.0, args.workers)
    args.amp = str(amp_dtype(args.device) or "off (CPU)").removeprefix("torch.")
    args.deadline, out, home = time.perf_counter() + args.budget_s, Path(args.out).resolve(), os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # MLflow's ./mlruns artifacts land in tmp
        try:
            rows = [guarded(part_train, args, tmp, 60), guarded(part_cache, args, tmp, 60),
                    guarded(part_search, args, tmp, 90), guarded(part_scaling, args, tmp, 120)]
        finally:
            os.chdir(home)
    text = table(args, rows)
    print("\n" + text, end="")
    out.write_text(text)
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""One typed, frozen config tree for a run, loaded from YAML plus dotted overrides.

Unknown keys and values of the wrong type are rejected with a one-line ConfigError that names the
key and, for a typo, the closest valid key. Each value is cast to its field's type by
pipelines/values.py (PyYAML reads `1e-3` as a string: numbers are cast, not trusted).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.errors import ConfigError
from pipelines.policy import Policy
from pipelines.shifts import parse_shifts
from pipelines.values import build_tree, read_yaml, set_dotted


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "timm/tf_efficientnet_lite0"  # "timm/<name>" or "torchvision/<name>"
    weights: str = "imagenet"  # none | imagenet | path to .pth/.safetensors | models:/<name>/<v|@alias>
    freeze: str = "frozen"  # unfrozen | frozen | last_n:K | gradual | layer_decay:F (0 < F < 1)
    # BatchNorm of frozen stages: frozen keeps its running statistics; train lets them adapt to the data
    bn: str = "frozen"
    drop_rate: float = 0.0
    # gradual: start frozen; before each listed epoch thaw the next stage, last stage first, whose
    # parameters train at lr * unfreeze_lr_mult (discriminative lr, as in fastai and Lightning).
    unfreeze_at: tuple[int, ...] = (2, 3)
    unfreeze_lr_mult: float = 0.1

    @functools.cached_property
    def policy(self) -> Policy:
        """freeze, bn and the thaw schedule as one value: parsed here once (validate() asks first, so a bad
        policy is refused with the config), carried by the prepared run, asked by whoever needs it."""
        return Policy.parse(self.freeze, self.bn, self.unfreeze_at, self.unfreeze_lr_mult)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"  # digits | fashion-mnist | imagefolder:<path> | a torchvision dataset name
    image_size: int = 96  # CPU-friendly; the backbone's own mean/std/interpolation still apply
    max_samples: int = 0  # cap on each split, for quick runs; 0 = no cap
    split_seed: int = 0  # apart from the run's seed, so repeats over seeds share one split
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augment: bool = False  # random resized crop + flip on train; off keeps the train transform deterministic
    num_workers: int = 0
    root: str = ""  # where downloadable datasets live; "" = ~/.cache/freezeframe/datasets
    # frozen features, and a partial fine-tuning's fixed prefix (last_n, stage, gradual): computed once, then
    # trained on (memory | disk | off); disk keeps them under cache_dir, keyed by what determines them.
    feature_cache: str = "memory"
    cache_dir: str = ""  # "" = ~/.cache/freezeframe/features
    # the most the in-memory cache holds; a larger entry spills to cache_dir and is read memory-mapped
    cache_memory_mb: int = 2048


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    scheduler: str = "cosine"  # cosine | constant
    label_smoothing: float = 0.0
    monitor: str = "val/acc"  # metric that picks the best epoch and drives early stopping
    early_stopping_patience: int = 0  # epochs without improvement before stopping; 0 = off
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    # processes one run trains on, data-parallel (one per GPU; on the CPU, gloo): > 1 starts them under
    # torch.distributed.run; batch_size stays the global batch, each process takes batch_size / devices
    devices: int = 1
    amp: bool = True  # mixed precision; only ever applied on CUDA
    channels_last: bool = True
    memory_limit_mb: int = 0  # CPU memory guard: a run whose peak RSS passes this fails cleanly; 0 = off
    checkpoint_dir: str = "checkpoints"  # one sub-folder per run config, holding last.pt
    resume: bool = False  # continue from the checkpoint of the same config, if there is one


@dataclass(frozen=True)
class EvalConfig:
    # after training, the best epoch's model is tested again on the test split under each shift, every arm on the
    # same shifted images: gaussian_noise:<sigma> | blur:<sigma px> | rotate:<max degrees> | jpeg:<quality>
    shifts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrackingConfig:
    experiment_name: str = "freezeframe"
    run_name: str = ""  # "" = "<backbone> · <freeze> · seed <seed>"
    log_model: bool = True  # mlflow.pytorch.log_model at the end; off saves a few seconds per run
    log_plots: bool = True  # curves, confusion matrix, input samples; off saves ~0.5 s per run (big searches)
    # CPU, memory, disk, network and (NVIDIA) GPU use as `system/*` metrics every 10 s while a run trains
    system_metrics: bool = True


@dataclass(frozen=True)
class ClusterConfig:
    """Where compare, rank and search run their workers (pipelines/cluster, freezeframe/launcher.py)."""
    engine: str = "local"  # local | ray | slurm
    workers: int = 1  # local with 1: this process is the worker; otherwise the launcher starts this many
    address: str = ""  # ray: host:port or ray://host:port; "" = RAY_ADDRESS
    partition: str = ""  # slurm: "" = the cluster's default partition
    time: str = ""  # slurm: each worker's time limit (sbatch --time, e.g. 4:00:00); "" = the partition's
    account: str = ""  # slurm: sbatch --account; "" = the user's default
    sbatch_flags: str = ""  # slurm: more #SBATCH options, e.g. "--qos=high --constraint=a100"
    # the interpreter workers run (`<python> -m freezeframe ...`); "" = the launcher's own, which the nodes must
    # have at the same path (a shared venv; on Ray, a node without it uses the Python that runs Ray there)
    python: str = ""


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


OPTIMIZERS = ("adamw", "sgd")
FEATURE_CACHES = ("memory", "disk", "off")
SCHEDULERS = ("cosine", "constant")
ENGINES = ("local", "ray", "slurm")
MONITORS = {"val/acc": "max", "val/f1_macro": "max", "val/loss": "min"}
# Keys that change neither the data nor the model, so two runs differing only there are the same run.
_NOT_IN_DIGEST = ("tracking", "cluster", "train.resume", "train.checkpoint_dir", "train.device", "train.devices",
                  "data.num_workers", "data.cache_memory_mb")
# Keys added after digests were in use: at these defaults they stay out of the digest, so an earlier run's
# arms and checkpoints keep theirs (a run tested under shifts has results the others lack: its digest differs).
_DIGEST_SINCE = {"eval.shifts": []}

# Top-level sections of an experiment file read by other entry points (compare, search), not by a run.
ENTRY_SECTIONS = ("compare", "search")


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the experiment file, then dotted overrides (`{"train.lr": 0.01}`)."""
    return load_experiment(path, overrides)[0]


def load_experiment(path: str | Path | None = None,
                    overrides: dict[str, Any] | None = None) -> tuple[RunConfig, dict[str, Any]]:
    """The run config and the entry-point sections (`compare:`, `search:`) of an experiment file."""
    raw: dict[str, Any] = read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    sections = {name: raw.pop(name) for name in ENTRY_SECTIONS if name in raw}
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value)
    return from_dict(raw, source), sections


def from_dict(raw: dict[str, Any], source: str) -> RunConfig:
    """A config from its nested dict (to_dict's form), typed and validated as a loaded file is."""
    cfg = build_tree(RunConfig, raw, prefix="", source=source)
    validate(cfg)
    return cfg


def with_overrides(cfg: RunConfig, overrides: dict[str, Any], source: str = "override") -> RunConfig:
    """The config with dotted keys replaced (`{"train.batch_size": 64}`), rebuilt and re-validated like a
    loaded one: the one way code changes a config, so no value skips the checks."""
    raw = to_dict(cfg)
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return from_dict(raw, source)


def validate(cfg: RunConfig) -> None:
    """Value checks that do not need the model or the data (those come when they are built)."""
    t, d = cfg.train, cfg.data
    checks = [
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (t.devices >= 1, f"train.devices must be >= 1, got {t.devices}"),
        (cfg.cluster.engine in ENGINES, f"cluster.engine must be one of {ENGINES}, got '{cfg.cluster.engine}'"),
        (cfg.cluster.workers >= 1, f"cluster.workers must be >= 1, got {cfg.cluster.workers}"),
        (t.devices < 1 or t.batch_size % t.devices == 0, f"train.batch_size {t.batch_size} is the global batch: "
         f"it must divide by train.devices ({t.devices}), each process taking batch_size / devices"),
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.early_stopping_patience >= 0, "train.early_stopping_patience must be >= 0"),
        (t.memory_limit_mb >= 0, f"train.memory_limit_mb must be >= 0 (0 = off), got {t.memory_limit_mb}"),
        (t.optimizer in OPTIMIZERS, f"train.optimizer must be one of {OPTIMIZERS}, got '{t.optimizer}'"),
        (t.scheduler in SCHEDULERS, f"train.scheduler must be one of {SCHEDULERS}, got '{t.scheduler}'"),
        (t.monitor in MONITORS, f"train.monitor must be one of {tuple(MONITORS)}, got '{t.monitor}'"),
        (d.image_size >= 16, f"data.image_size must be >= 16, got {d.image_size}"),
        (d.max_samples >= 0, f"data.max_samples must be >= 0 (0 = no cap), got {d.max_samples}"),
        (d.num_workers >= 0, f"data.num_workers must be >= 0, got {d.num_workers}"),
        (d.cache_memory_mb >= 0, f"data.cache_memory_mb must be >= 0, got {d.cache_memory_mb}"),
        (0 < d.val_fraction < 1 and 0 < d.test_fraction < 1 and d.val_fraction + d.test_fraction < 1,
         "data.val_fraction and data.test_fraction must each be in (0, 1) and sum to less than 1"),
        (0 <= cfg.model.drop_rate < 1, f"model.drop_rate must be in [0, 1), got {cfg.model.drop_rate}"),
        (cfg.model.unfreeze_lr_mult > 0, f"model.unfreeze_lr_mult must be > 0, got {cfg.model.unfreeze_lr_mult}"),
        (d.feature_cache in FEATURE_CACHES,
         f"data.feature_cache must be one of {FEATURE_CACHES}, got '{d.feature_cache}'"),
        ("/" in cfg.model.backbone, f"model.backbone must be 'timm/<name>' or 'torchvision/<name>', "
                                    f"got '{cfg.model.backbone}'"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    policy = cfg.model.policy  # parsed here: model.freeze and model.bn checked too
    policy.check_schedule(t.epochs)
    parse_shifts(cfg.eval.shifts)  # a bad shift is refused here, before any training
    if policy.kind == "linear_probe" and t.devices > 1:
        raise ConfigError("linear_probe fits its head in one process (L-BFGS on cached features): "
                          f"train.devices must be 1, got {t.devices}")
    if policy.kind == "linear_probe" and (d.augment or cfg.model.bn == "train"):
        raise ConfigError("linear_probe fits the head on fixed features, from the backbone in eval mode: "
                          f"{'data.augment' if d.augment else 'model.bn=train'} does not apply to it; turn it off")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain YAML/JSON-ready values: tuples become lists."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def flatten(cfg: RunConfig) -> dict[str, Any]:
    """`{"train.lr": 0.001, ...}`: the keys MLflow shows as params columns (sections hold values, not sections)."""
    out: dict[str, Any] = {}
    for name, value in to_dict(cfg).items():
        out.update({f"{name}.{key}": v for key, v in value.items()} if isinstance(value, dict) else {name: value})
    return out


def digest(cfg: RunConfig) -> str:
    """A stable hash of everything that changes results (not where or how it is logged)."""
    relevant = {
        k: v for k, v in flatten(cfg).items()
        if not any(k == skip or k.startswith(skip + ".") for skip in _NOT_IN_DIGEST)
        and not (k in _DIGEST_SINCE and v == _DIGEST_SINCE[k])
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)

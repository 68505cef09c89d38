"""Command line: `python -m freezeframe <command> ...`, the commands MLproject's entry points run (and reregister).

Each MLproject parameter has a flag of the same name. An empty value means "as in the experiment
file", so a parameter given to `mlflow run -P` overrides the file and an omitted one does not.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import tracking  # noqa: F401 - sets MLflow's environment (telemetry off, quieter logs) before mlflow loads
from freezeframe import __version__
from pipelines.cluster.workers import WORKER_ENV
from pipelines.config import RunConfig, load_experiment, with_overrides
from pipelines.errors import ConfigError, FreezeframeError, first_line
from pipelines.processes import process_rank, world_size
from pipelines.ranking import SCORES
from pipelines.state import state_dir
from pipelines.values import coerce

# MLproject parameter / flag name → config key. Types are checked by the config loader.
RUN_FLAGS = {
    "backbone": "model.backbone", "weights": "model.weights", "freeze": "model.freeze",
    "dataset": "data.dataset", "epochs": "train.epochs", "batch_size": "train.batch_size", "lr": "train.lr",
    "image_size": "data.image_size", "seed": "seed", "max_samples": "data.max_samples",
    "resume": "train.resume", "log_model": "tracking.log_model", "devices": "train.devices",
}
# compare, rank and search: where their workers run (freezeframe/launcher.py), as flags and MLproject parameters
CLUSTER_FLAGS = {"cluster": "cluster.engine", "workers": "cluster.workers"}
LAUNCHED = ("compare", "rank", "search")  # the commands whose workers an engine can start
# The grid's own axes (backbone, weights, freeze, seed) come from its compare: section.
COMPARE_FLAGS = ("dataset", "epochs", "batch_size", "lr", "image_size", "max_samples", "log_model", "devices")
RANK_FLAGS = ("dataset", "batch_size", "image_size", "max_samples", "log_model")  # a linear probe has no epochs or lr
DEFAULT_EXPERIMENT = "experiments/quickstart.yaml"
STUDY_FLAGS = {
    "storage": "Optuna storage URL: sqlite:///optuna.db (when ''), postgresql+psycopg2://..., journal:<file>",
    "study_name": "study name (compare: compare.name; rank: compare.name-rank; search: search.study_name)",
    "n_trials": "trials this worker adds", "max_trials": "the study's total over every worker and rerun",
    "timeout": "seconds this worker may start trials for", "sampler": "tpe | random | grid | nsga2",
    "pruner": "successive_halving | hyperband | median | none", "seed": "sampler seed",
}
# command → the freezeframe module that defines a function of that name. Only the chosen command's module is
# imported, after parsing, so `--help` and config errors stay instant and a command loads only what it uses:
# `predict` no study code, and compare, rank and search the training stack only when an arm or trial trains.
COMMANDS = {"train": "train", "pretrain": "train", "compare": "compare", "search": "search", "rank": "rank",
            "predict": "predict", "reregister": "predict"}
PROJECT_ROOT = Path(__file__).resolve().parent.parent
# An installed wheel holds experiments/ as freezeframe/experiments/ (pyproject.toml's package-dir).
PACKAGE_DIR = Path(__file__).resolve().parent


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, and it closes a launcher run like any other bad input
        raise ConfigError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="freezeframe", description="Tracked transfer-learning runs.")
    parser.add_argument("--version", action="version", version=f"freezeframe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="one run: one backbone, one freeze policy")
    _add_run_flags(train)
    pre = sub.add_parser("pretrain", help="train on a source dataset and register the model for transfer")
    _add_run_flags(pre)
    pre.add_argument("--registered_model", default="", help="registry name ('' = <backbone>-<dataset>)")
    pre.add_argument("--alias", default="pretrained", help="registry alias pointed at the new version")
    comp = sub.add_parser("compare", help="a grid of backbones x freeze policies x seeds: a study whose trials "
                                          "are its arms, under one parent run; any number of workers")
    _add_run_flags(comp, only=COMPARE_FLAGS)
    _add_study_flags(comp, ("storage", "study_name"))
    _add_cluster_flags(comp)
    order = sub.add_parser("rank", help="order a comparison's backbones by their frozen features (LogME, k-NN, "
                                        "linear probe) before fine-tuning any; one linear_probe arm per backbone")
    _add_run_flags(order, only=RANK_FLAGS)
    _add_study_flags(order, ("storage", "study_name"))
    _add_cluster_flags(order)
    order.add_argument("--by", default="linear_probe", choices=tuple(SCORES),
                       help="the score the ranking orders by (every score is logged)")
    find = sub.add_parser("search", help="an Optuna study over batch sizes (multiples of 8), trials as child runs")
    _add_run_flags(find, only=COMPARE_FLAGS)
    _add_study_flags(find, tuple(STUDY_FLAGS))
    _add_cluster_flags(find)
    pred = sub.add_parser("predict", help="top-k classes of an image or a folder from a logged model")
    pred.add_argument("--model", default="models:/freezeframe-quickstart@champion",
                      help="models:/<name>@<alias>, models:/<name>/<v> or runs:/<id>/model")
    pred.add_argument("--input", default="", help="an image file or a folder of images")
    pred.add_argument("--top_k", type=_whole_number, default=5)
    pred.add_argument("--output", default="", help="CSV path ('' = predictions.csv for a folder)")
    again = sub.add_parser("reregister", help="add safetensors weights to a version logged before freezeframe "
                                              "wrote them, from its pickle: only for a model you trust")
    again.add_argument("--model", required=True, help="models:/<name>@<alias> or models:/<name>/<version>")
    return parser


def _add_study_flags(parser: argparse.ArgumentParser, flags: tuple[str, ...]) -> None:
    for flag in flags:
        parser.add_argument(f"--{flag}", default="", metavar="VALUE", help=f"{STUDY_FLAGS[flag]} ('' = from the file)")


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="", metavar="ENGINE",
                        help="where workers run: local | ray | slurm (overrides cluster.engine; '' = from the file)")
    parser.add_argument("--workers", default="", metavar="N",
                        help="workers the launcher starts (overrides cluster.workers; '' = from the file)")
    parser.add_argument("--dry-run", action="store_true",
                        help="cluster=slurm: print the sbatch script that would be submitted, submit nothing")


def _whole_number(text: str) -> int:
    """MLflow passes float-typed parameters as "5.0"."""
    return coerce(text, int, "--top_k", "command line")


def _add_run_flags(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment YAML file")
    for flag, key in RUN_FLAGS.items():
        if only is not None and flag not in only:
            continue
        parser.add_argument(f"--{flag}", default="", metavar="VALUE", help=f"overrides {key} ('' = from the file)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.weight_decay=0.05")


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, dict]:
    """The run config and the experiment file's entry-point sections (compare:, search:)."""
    run_flags = RUN_FLAGS if args.command != "search" else {f: RUN_FLAGS[f] for f in COMPARE_FLAGS}
    run_flags = {**run_flags, **CLUSTER_FLAGS}
    overrides = {key: getattr(args, flag) for flag, key in run_flags.items() if getattr(args, flag, "") != ""}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        overrides[key.strip()] = value
    return load_experiment(resolve_experiment(args.experiment or DEFAULT_EXPERIMENT), overrides)


def stable_state(args: argparse.Namespace, cfg: RunConfig | None) -> RunConfig | None:
    """In a temporary project folder (`mlflow run <git URI>` fetches the project anew each run), the
    default study storage and a relative checkpoint folder move to the per-user state folder
    (pipelines.state), so that a rerun resumes; said once. Paths given explicitly are kept."""
    home = state_dir()
    if home is None or cfg is None:
        return cfg
    moved = []
    if not Path(cfg.train.checkpoint_dir).is_absolute():
        cfg = with_overrides(cfg, {"train.checkpoint_dir": str(home / cfg.train.checkpoint_dir)})
        moved.append(f"checkpoints under {cfg.train.checkpoint_dir}")
    if getattr(args, "storage", None) == "":
        args.storage = f"sqlite:///{home / 'optuna.db'}"
        moved.append(f"study storage {args.storage}")
    if moved:
        home.mkdir(parents=True, exist_ok=True)
        print(f"freezeframe: {Path.cwd()} is a temporary folder (mlflow run <URI> fetches the project into a new "
              f"one each run): {'; '.join(moved)}", file=sys.stderr, flush=True)
    return cfg


def resolve_experiment(path: str) -> Path:
    """Relative to the working folder, else the shipped one: in the checkout (experiments/...), or in the
    installed package (freezeframe/experiments/...), so `--experiment experiments/last_n.yaml` works anywhere."""
    given = Path(path)
    if given.is_absolute() or given.exists():
        return given
    for shipped in (PACKAGE_DIR / given, PROJECT_ROOT / given):
        if shipped.is_file():
            return shipped
    return given


def main(argv: list[str] | None = None) -> int:
    start_process()
    try:
        args = build_parser().parse_args(argv)
        args.argv = sys.argv[1:] if argv is None else argv  # train.devices > 1 runs this command again, N times
        cfg, sections = config_from_args(args) if args.command not in ("predict", "reregister") else (None, {})
        if world_size() > 1 and args.command not in ("train", "pretrain"):  # torchrun -m freezeframe compare
            raise ConfigError(f"{args.command} under torchrun: a worker is one process, and it starts each arm's "
                              "train.devices processes itself (-P devices=N); run several workers to use more")
        if cfg is not None and cfg.train.devices > 1 and args.command == "rank":
            raise ConfigError("rank fits linear probes on cached features, in one process: train.devices must be 1")
        if cfg is not None and cfg.train.devices > 1 and world_size() == 1:
            _check_devices(cfg)  # before any process starts (train) or any arm is queued (compare, search)
        cfg = stable_state(args, cfg)
        args.launcher = None
        launches = cfg is not None and args.command in LAUNCHED and launching(cfg)
        if getattr(args, "dry_run", False) and not (launches and cfg.cluster.engine == "slurm"):
            raise ConfigError("--dry-run prints the Slurm script that would be submitted: it needs --cluster slurm")
        if launches:
            from freezeframe import launcher  # MLflow and the engine's client: only where workers are launched

            args.launcher = launcher.connect(args, cfg)  # the engine joined and checked before anything opens
            if args.dry_run:
                return launcher.dry_run(args.launcher)
        return command(args.command)(args, cfg, sections)
    except (FreezeframeError, KeyboardInterrupt) as exc:
        return exit_code(exc)


def launching(cfg: RunConfig) -> bool:
    """This process submits workers (--cluster ray|slurm, or --workers N), unless an engine started it as one."""
    return (cfg.cluster.engine != "local" or cfg.cluster.workers > 1) and not os.environ.get(WORKER_ENV)


def start_process() -> None:
    """What every freezeframe process sets first (this command line, an arm's N processes): warnings-level
    logging, and SIGTERM (`kill`, `mlflow run` cancelled, elastic's monitor) raised as KeyboardInterrupt, so
    that runs end KILLED."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)


def exit_code(exc: FreezeframeError | KeyboardInterrupt) -> int:
    """A user's error in one line (exit 2; the `mlflow run` launcher's run, if any, ends FAILED with it), or
    an interruption (exit 130)."""
    if isinstance(exc, KeyboardInterrupt):
        print(f"freezeframe: interrupted{f': {exc}' if str(exc) else ''}", file=sys.stderr)
        return 130
    message = first_line(exc, limit=2000)
    if process_rank() == 0:  # under torchrun, process 0 alone owns the launcher's run
        _close_launcher_run(message)
    print(f"freezeframe: error: {message}", file=sys.stderr)
    return 2


def command(name: str) -> Callable[..., int]:
    return getattr(importlib.import_module(f"freezeframe.{COMMANDS[name]}"), name)


def _check_devices(cfg: RunConfig) -> None:
    from pipelines.training.device import resolve_device
    from pipelines.training.distributed import check_devices  # torch: the N processes load it anyway

    check_devices(cfg.train.devices, resolve_device(cfg.train.device))


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _close_launcher_run(message: str) -> None:
    from tracking.runs.session import fail_launcher_run

    try:
        fail_launcher_run(message)
    except Exception as exc:  # noqa: BLE001 - the store itself may be the problem; the error above matters more
        print(f"freezeframe: could not mark the launcher's run FAILED: {exc}", file=sys.stderr)

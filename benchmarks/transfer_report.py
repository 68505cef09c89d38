"""The transfer report: run experiments/transfer_report.yaml (EfficientNet-Lite0/1/2 × freeze policies ×
seeds on Fashion-MNIST) with N `python -m freezeframe compare` workers on one journal storage, then the
fixed-feature arms (frozen, linear_probe; seed 0) again at each backbone's native input size (one
comparison per backbone, since a grid has one image size), then write docs/transfer-report.md with its
figures, checked against Kornblith, Shlens & Le (CVPR 2019).

    .venv/bin/python benchmarks/transfer_report.py --workers 2 --out /tmp/transfer-report

Rerun into the same --out to resume (finished arms are skipped by `compare` itself); `--report-only`
rewrites the report from --out. A smoke run narrows the grid and shrinks the data (--native-size
replaces each backbone's native size, so the smoke stays small):

    .venv/bin/python benchmarks/transfer_report.py --out /tmp/tr-smoke --report /tmp/tr-smoke/report.md \
        --backbones lite0,lite1 --freeze frozen,linear_probe,unfrozen --seeds 0,1 \
        --set data.max_samples=40 --set train.epochs=1 --set data.image_size=64 --native-size 80
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mlflow  # noqa: E402
import timm  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from benchmarks.transfer_document import write_report  # noqa: E402
from benchmarks.workers import run_workers  # noqa: E402
from pipelines.config import load_experiment  # noqa: E402
from pipelines.studies.arms import arm_configs, parse_comparison  # noqa: E402
from tracking import tags  # noqa: E402
from tracking.studies import parent_run  # noqa: E402
from tracking.studies.comparison_report import arm_records, current_attempts  # noqa: E402

# Fixed features cost one forward pass over the splits per backbone, affordable on CPU at full size; one
# seed, since per-image intervals need no more and the probe's fit does not depend on it.
NATIVE_FREEZE = ("frozen", "linear_probe")
NATIVE_SEEDS = (0,)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="experiments/transfer_report.yaml")
    p.add_argument("--workers", type=int, default=2, help="compare processes on one journal storage")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "transfer-report"),
                   help="work folder: mlflow.db, optuna.journal, checkpoints, worker logs (a rerun resumes)")
    p.add_argument("--report", default=str(ROOT / "docs/transfer-report.md"), help="figures go to <stem>/ beside it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed to each worker")
    p.add_argument("--backbones", default="", help="narrow the grid: comma list of name suffixes (lite0,lite1)")
    p.add_argument("--freeze", default="", help="narrow the grid: comma list of policies")
    p.add_argument("--seeds", default="", help="narrow the grid: comma list of seeds")
    p.add_argument("--native-size", type=int, default=0,
                   help="the native-size arms at this size instead of each backbone's own (a smoke run)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from --out; run nothing")
    return p.parse_args()


def derive_grids(args, out: Path) -> list[tuple[Path, list[str]]]:
    """The experiment files as the workers run them, each with its --set list: the main grid narrowed by
    --backbones/--freeze/--seeds (`--set` cannot reach the compare: section), then per backbone its
    fixed-feature arms at its native size (a study of their own: a grid has one image size).
    Checkpoints (and the feature caches the fixed-feature arms share) are kept in --out."""
    source = Path(args.experiment) if Path(args.experiment).exists() else ROOT / args.experiment
    raw = yaml.safe_load(source.read_text())
    grid = raw["compare"]
    if args.backbones:
        grid["backbones"] = [b for b in grid["backbones"] if str(b["name"] if isinstance(b, dict) else b)
                             .endswith(tuple(args.backbones.split(",")))]
    if args.freeze:
        grid["freeze"] = args.freeze.split(",")
    if args.seeds:
        grid["seeds"] = [int(s) for s in args.seeds.split(",")]
    raw.setdefault("train", {})["checkpoint_dir"] = str(out / "checkpoints")
    # the main grid keeps the experiment's file name: the same champion name as a plain `compare` of it
    grids = [(_write_grid(out / Path(args.experiment).name, raw, args.experiment), args.set)]
    for backbone in grid["backbones"]:
        name = str(backbone["name"] if isinstance(backbone, dict) else backbone)
        size = args.native_size or native_size(name)
        native = {**raw, "compare": {"name": f"{grid['name']}-native-{name.rsplit('/', 1)[-1]}",
                                     "backbones": [backbone], "freeze": list(NATIVE_FREEZE),
                                     "seeds": list(NATIVE_SEEDS)}}
        path = out / f"{Path(args.experiment).stem}-native-{name.rsplit('/', 1)[-1]}.yaml"
        grids.append((_write_grid(path, native, args.experiment), [*args.set, f"data.image_size={size}"]))
    return grids


def native_size(backbone: str) -> int:
    """The input size a timm backbone was trained at (its pretrained config), e.g. 224 for Lite0."""
    cfg = timm.models.get_pretrained_cfg(backbone.removeprefix("timm/"))
    if cfg is None:
        sys.exit(f"{backbone}: timm knows no native input size for it; pass --native-size")
    return int(cfg.input_size[-1])


def _write_grid(path: Path, raw: dict, source: str) -> Path:
    path.write_text(f"# derived from {source} by benchmarks/transfer_report.py\n"
                    + yaml.safe_dump(raw, sort_keys=False))
    return path


def read_records(out: Path, grid: Path, sets: list[str]) -> tuple[list[dict], dict]:
    """The current attempt of every arm of this grid under the study's parent run (finished ones with
    their per-image outcomes), and the parent's facts."""
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    cfg, sections = load_experiment(grid, dict(s.split("=", 1) for s in sets))
    spec = parse_comparison(sections["compare"], cfg, str(grid))
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    query = f"tags.`{tags.STUDY}` = '{spec.name}' and tags.`{tags.ENTRY_POINT}` = 'compare'"
    parents = [r for r in client.search_runs(ids, query, order_by=["attributes.start_time ASC"])
               if not {tags.PARENT, tags.WORKER_OF, tags.DUPLICATE_OF} & set(r.data.tags)]
    if not parents:
        sys.exit(f"no parent run 'compare · {spec.name}' in {out / 'mlflow.db'}")
    runs = current_attempts(parent_run.children(parents[0].info.run_id), set(arm_configs(spec)))
    done = [r for r in runs if r.info.status == "FINISHED"]
    params = done[0].data.params if done else {}
    inputs = done[0].inputs.dataset_inputs if done and done[0].inputs else []
    source = json.loads(inputs[0].dataset.source).get("tags", {}).get("source", "?") if inputs else "?"
    meta = {"parent": parents[0].info.run_id, "parent_status": parents[0].info.status, "source": source,
            "store": str(out / "mlflow.db"), "arms": len(spec.arms), **{k: params.get(k, "?") for k in (
                "data.dataset", "data.n_train", "data.n_val", "data.n_test", "data.image_size", "train.epochs",
                "train.lr", "train.batch_size", "data.max_samples")},
            "order": {"backbone": list(dict.fromkeys(a.backbone for a in spec.arms)),
                      "freeze": list(dict.fromkeys(a.freeze for a in spec.arms)),
                      "seeds": list(dict.fromkeys(a.seed for a in spec.arms))}}
    return arm_records(runs), meta


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "invocations.json"
    invocations = json.loads(log_path.read_text()) if log_path.exists() else []
    if args.report_only:
        if not invocations:
            sys.exit(f"{out} holds no run of this script")
        grids = [(Path(g), sets) for g, sets in invocations[-1]["grids"]]
    else:
        grids = derive_grids(args, out)
        start = time.perf_counter()
        # the main grid's arms spread over the workers; a native-size study is two arms sharing one
        # extraction pass (the feature cache), so one worker with every core runs it best
        walls = [run_workers(out, "compare", grid, sets, args.workers if i == 0 else 1)
                 for i, (grid, sets) in enumerate(grids)]
        python = os.path.relpath(sys.executable, Path.cwd()) if sys.executable.startswith(str(Path.cwd())) \
            else sys.executable
        invocations.append({"command": shlex.join([python, *sys.argv]), "grids": [(str(g), s) for g, s in grids],
                            "wall_s": time.perf_counter() - start, "main_wall_s": walls[0],
                            "workers": args.workers, "threads": max(1, (os.cpu_count() or 1) // args.workers)})
        log_path.write_text(json.dumps(invocations, indent=1))
        print(f"all workers done in {invocations[-1]['wall_s']:.0f} s")
    (main_records, meta), *native = [read_records(out, grid, sets) for grid, sets in grids]
    native_records = [r for records, _ in native for r in records]
    sizes = {m["order"]["backbone"][0]: int(m["data.image_size"]) for _, m in native if m["data.image_size"] != "?"}
    write_report(main_records, native_records, {**meta, "invocations": invocations, "native_sizes": sizes,
                                                "native": [m for _, m in native]}, Path(args.report).resolve())


if __name__ == "__main__":
    main()

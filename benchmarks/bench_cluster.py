"""The same comparison (8 arms, 2 workers) started by each engine: this machine's processes (`--workers 2`),
a 3-node Ray cluster (`--cluster ray`: a head and two nodes of 1 CPU and 1 logical GPU, inside a network
namespace of its own, as tests/test_ray.py runs it) and a one-node Slurm (`--cluster slurm`: a 2-task job
array). Each on a fresh PostgreSQL storage and a real `mlflow server`. Prints per engine the wall time
(launcher start to exit) against local's, and the scheduling overhead: a worker's start (launch to its
first arm's run) and the gap between one arm's end and the next arm's start on the same worker.

    .venv/bin/python benchmarks/bench_cluster.py [--arms 8] [--engines local,ray,slurm]

Needs root (the Slurm daemons, the namespace), Debian's slurm-wlm and munge, PostgreSQL on 127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


def experiment(folder: Path, arms: int, name: str) -> Path:
    path = folder / "grid.yaml"
    path.write_text(
        "model: {backbone: timm/test_resnet, weights: none, freeze: unfrozen}\n"
        "data: {image_size: 32, max_samples: 120}\n"
        f"train: {{epochs: 3, batch_size: 16, lr: 0.01, checkpoint_dir: {folder / 'checkpoints'}}}\n"
        f"tracking: {{log_model: false, log_plots: false, experiment_name: {name}}}\n"
        f"compare: {{name: {name}, freeze: [frozen, unfrozen], seeds: {list(range(arms // 2))}}}\n")
    return path


def fresh_database() -> str:
    import psycopg2

    name = f"bench_cluster_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(f"{POSTGRES}/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name}")
    admin.close()
    return f"{POSTGRES.replace('postgresql://', 'postgresql+psycopg2://')}/{name}"


def launch(folder: Path, name: str, args: list[str], env: dict) -> dict:
    """Run the launcher; its runs and timings, as tests/cluster_checks.records gives them."""
    from mlflow.tracking import MlflowClient

    from tests.cluster_checks import records

    storage = fresh_database()
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "freezeframe", "compare", "--experiment", str(folder / "grid.yaml"),
                           "--storage", storage, "--workers", "2", *args], cwd=folder, env=env,
                          capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode:
        raise SystemExit(f"{args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    runs, _ = records(MlflowClient(env["MLFLOW_TRACKING_URI"]), name, storage)
    return {"runs": runs, "launched_at": started, "launcher_s": wall}


def on_ray(folder: Path, name: str) -> dict:
    """tests/ray_scenario.py in a network namespace of its own (its private PostgreSQL and mlflow server)."""
    out = folder / "ray.json"
    script = f"ip link set lo up && exec {sys.executable} -m tests.ray_scenario {folder / 'grid.yaml'} {out} " \
             f"--experiment-name {name}"
    subprocess.run(["unshare", "-n", "bash", "-c", script], cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text())
    if result.get("returncode") != 0:
        raise SystemExit(f"ray: {result.get('output', '')[-3000:]}")
    return result


def timings(result: dict) -> dict[str, float]:
    arms = [r for r in result["runs"] if "arm" in r["tags"] and r["status"] == "FINISHED"]
    by_worker: dict[str, list[dict]] = {}
    for run in sorted(arms, key=lambda r: r["start"]):
        by_worker.setdefault(run["tags"]["cluster.worker"], []).append(run)
    starts = [runs[0]["start"] - result["launched_at"] for runs in by_worker.values()]
    gaps = [b["start"] - a["end"] for runs in by_worker.values() for a, b in itertools.pairwise(runs)]
    return {"arms": len(arms), "wall_s": result["launcher_s"], "worker_start_s": statistics.median(starts),
            "gap_s": statistics.median(gaps) if gaps else float("nan"),
            "arm_s": statistics.median(r["end"] - r["start"] for r in arms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", type=int, default=8)
    parser.add_argument("--engines", default="local,ray,slurm")
    args = parser.parse_args()
    from tests.conftest import serving_mlflow
    from tests.slurm_cluster import slurm_cluster

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_RUN_ID", None)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, serving_mlflow(Path(tmp)) as tracking:
        env["MLFLOW_TRACKING_URI"] = tracking
        for engine in args.engines.split(","):
            folder = Path(tmp) / engine
            folder.mkdir()
            folder.chmod(0o755)
            name = f"bench-{engine}-{uuid.uuid4().hex[:4]}"
            experiment(folder, args.arms, name)
            if engine == "local":
                rows[engine] = timings(launch(folder, name, [], env))
            elif engine == "ray":
                rows[engine] = timings(on_ray(folder, name))
            else:
                with slurm_cluster(folder / "slurm-daemons") as slurm:
                    rows[engine] = timings(launch(folder, name, ["--cluster", "slurm"],
                                                  {**env, "SLURM_CONF": slurm["SLURM_CONF"], "PATH": slurm["PATH"]}))
            print(f"{engine}: {rows[engine]}", file=sys.stderr, flush=True)
    base = rows.get("local", {}).get("wall_s")
    print(f"{args.arms} arms, 2 workers (timm/test_resnet, 32 px, 120 images, 3 epochs), one 2-core machine")
    print("| engine | arms | wall s | × local | worker start s | gap between arms s | arm s |")
    print("|---|---|---|---|---|---|---|")
    for engine, row in rows.items():
        ratio = f"{row['wall_s'] / base:.2f}" if base else "—"
        print(f"| {engine} | {row['arms']} | {row['wall_s']:.1f} | {ratio} | {row['worker_start_s']:.1f} | "
              f"{row['gap_s']:.2f} | {row['arm_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A comparison on a real 3-node Ray cluster, run inside a network namespace of its own (the test runs
`unshare -n`: only 127.0.0.1 exists there, so every packet stays on loopback, as
../shared/cluster-notes.md explains). Everything the run talks to starts in the namespace too: a private
PostgreSQL (the study's storage), a real `mlflow server`, and `ray.cluster_utils.Cluster` with a head of
1 CPU and two worker nodes of 1 CPU and 1 logical GPU each. `freezeframe compare --cluster ray --workers 2`
runs against them; with `--remove-node`, the node under the first arm that has logged an epoch is removed
mid-arm. What the test asserts on is written to a JSON file before the namespace goes away.

    python -m tests.ray_scenario EXPERIMENT OUT.json [--remove-node]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# root's tools live in sbin, which a plain user's PATH (and `env -i`) leaves out
RUNUSER = shutil.which("runuser", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") or "runuser"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def private_postgres(folder: Path, port: int) -> str:
    """initdb + pg_ctl as the postgres user, in `folder` (a+x all the way up), on 127.0.0.1:`port`."""
    data = folder / "pg"
    data.mkdir()
    shutil.chown(data, "postgres", "postgres")
    as_pg = [RUNUSER, "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", f"-p {port} -k {data} -h 127.0.0.1",
                    "-l", str(data / "log"), "-w", "start"], check=True, capture_output=True)
    subprocess.run([*as_pg, str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "optuna"], check=True)
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/optuna"


def stop_postgres(folder: Path) -> None:
    subprocess.run([RUNUSER, "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(folder / "pg"), "-m", "fast",
                    "stop"], capture_output=True, check=False)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment")
    parser.add_argument("out")
    parser.add_argument("--remove-node", action="store_true")
    parser.add_argument("--experiment-name", default="tests")
    parser.add_argument("--python", default="", help="the launcher's interpreter (the test's: the preloaded one)")
    args = parser.parse_args()
    # short: Ray's socket paths must stay under the 107 characters of a unix socket name
    folder = Path(tempfile.mkdtemp(prefix="ffray-", dir="/tmp"))
    folder.chmod(0o755)
    (folder / "ray").mkdir()
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true", RAY_TMPDIR=str(folder / "ray"))
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from tests import preloaded
    from tests.cluster_checks import records, wait_mid_arm
    from tests.conftest import free_port, serving_mlflow

    result: dict = {}
    cluster = None
    try:
        storage = private_postgres(folder, free_port())
        with serving_mlflow(folder) as tracking:
            started = time.monotonic()
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 1, "object_store_memory": 80_000_000})
            workers = [cluster.add_node(num_cpus=1, num_gpus=1, object_store_memory=80_000_000) for _ in range(2)]
            cluster.wait_for_nodes()
            result["cluster_up_s"] = time.monotonic() - started
            result["gpu_nodes"] = [node.node_id for node in workers]
            # the launcher and its workers: forks of a preloaded server started here, inside the namespace
            env = {**os.environ, "RAY_ADDRESS": cluster.address, "MLFLOW_TRACKING_URI": tracking,
                   "PYTHONPATH": str(ROOT), "FREEZEFRAME_PRELOADED": preloaded.address()}
            env.pop("MLFLOW_RUN_ID", None)
            log = open(folder / "launcher.log", "w")
            python = args.python or sys.executable
            command = [python, "-m", "freezeframe", "compare", "--experiment", args.experiment,
                       "--cluster", "ray", "--workers", "2", "--storage", storage]
            started = time.monotonic()
            launcher = subprocess.Popen(command, cwd=Path(args.experiment).parent, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
            client = MlflowClient(tracking)
            if args.remove_node:
                run, epoch = wait_mid_arm(client, args.experiment_name, launcher)
                worker = run.data.tags["cluster.worker"].removeprefix("ray:")
                node = next(n for n in workers if n.node_id.startswith(worker))
                result["removed"] = {"node": node.node_id, "run_id": run.info.run_id,
                                     "arm": run.data.tags.get("arm"), "digest": run.data.tags["config_digest"],
                                     "at_epoch": epoch}
                cluster.remove_node(node, allow_graceful=False)
            result["returncode"] = launcher.wait(timeout=400)
            result["launcher_s"] = time.monotonic() - started
            result["launched_at"] = time.time() - result["launcher_s"]
            log.close()
            result["output"] = (folder / "launcher.log").read_text()[-20000:]
            result["runs"], result["trials"] = records(client, args.experiment_name, storage)
    finally:
        preloaded.stop()
        if cluster is not None:
            ray.shutdown()
            cluster.shutdown()
        stop_postgres(folder)
        Path(args.out).write_text(json.dumps(result, default=str))
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""compare on a real Ray cluster (ray.cluster_utils.Cluster: a head and two worker nodes of 1 CPU and 1
logical GPU each), PostgreSQL storage and a real `mlflow server`, all inside a network namespace of the
test's own so that every packet stays on loopback (tests/ray_scenario.py). Four arms, two workers: each arm
runs on a GPU node; one worker node is removed mid-arm, its arm is failed, queued again and resumed from
its checkpoint on the other node, and the comparison ends FINISHED with every arm once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_checks import GRID, SLOW_ARMS, check_grid
from tests.conftest import ROOT, require_cluster_engines, tiny_experiment
from tests.preloaded import python_shim

pytestmark = pytest.mark.slow
SBIN = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"  # root's tools: a plain PATH (and `env -i`) leaves sbin out


def cannot_run() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install 'freezeframe[ray]')"
    if os.geteuid() != 0 or not all(shutil.which(tool, path=SBIN) for tool in ("unshare", "ip", "runuser")):
        return "a network namespace of the test's own needs root, unshare, ip and runuser"
    if not Path("/usr/lib/postgresql/15/bin/initdb").exists():
        return "no PostgreSQL server binaries to start a private one inside the namespace"
    return None


def test_four_arms_on_two_gpu_nodes_and_a_node_lost_mid_arm(tmp_path):
    why = cannot_run()
    if why:
        require_cluster_engines(f"Ray: {why}")
    tmp_path.chmod(0o755)  # the experiment is read by workers; PostgreSQL runs as its own user
    shim = python_shim(tmp_path)  # launcher and workers: forks of the scenario's preloaded server
    path = tiny_experiment(tmp_path, GRID.format(name="ray-grid"), **SLOW_ARMS, **{"cluster.python": shim})
    out = tmp_path / "result.json"
    scenario = f"{shutil.which('ip', path=SBIN)} link set lo up && " \
               f"exec {sys.executable} -m tests.ray_scenario {path} {out} --remove-node --python {shim}"
    done = subprocess.run(["unshare", "-n", "bash", "-c", scenario], cwd=ROOT, capture_output=True, text=True,
                          timeout=420, env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.read_text()) if out.exists() else {}
    shown = (done.stderr[-3000:], result.get("output", "")[-4000:])
    assert done.returncode == 0 and result.get("returncode") == 0, shown
    finished = check_grid(result["runs"], result["trials"], lost=result["removed"]["run_id"])
    on_gpu_nodes = {f"ray:{node[:12]}" for node in result["gpu_nodes"]}
    placed = {r["tags"]["cluster.worker"] for r in result["runs"] if "cluster.worker" in r["tags"]}
    assert placed <= on_gpu_nodes and len(finished) == 4, placed  # the head (no GPU) ran none
    lost = finished[result["removed"]["digest"]]
    assert lost["tags"]["cluster.worker"] != f"ray:{result['removed']['node'][:12]}"  # resumed on the other node

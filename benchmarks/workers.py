"""Benchmarks that run the product's own studies: N `python -m freezeframe <command>` workers on one
journal storage and one sqlite tracking store in a work folder, their arm lines echoed as they start."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_workers(out: Path, command: str, grid: Path, sets: list[str], workers: int) -> float:
    """Start `workers` processes of `freezeframe <command> --experiment grid`, echo their arm lines,
    wait; any nonzero exit ends the benchmark with the log's tail. Returns the wall seconds."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    argv = [sys.executable, "-m", "freezeframe", command, "--experiment", str(grid),
            "--storage", f"journal:{out / 'optuna.journal'}", *[x for s in sets for x in ("--set", s)]]
    print(f"{workers} workers × {threads} torch threads: {shlex.join(argv)}", flush=True)
    logs = [out / f"worker-{grid.stem}-{i}.log" for i in range(workers)]
    start = time.perf_counter()
    procs = [subprocess.Popen(argv, cwd=out, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    printed = [0] * len(logs)
    while True:  # Ctrl-C reaches the workers too: each ends its running arm KILLED and queues it again
        running = any(p.poll() is None for p in procs)
        for i, log in enumerate(logs):
            arms = [line for line in log.read_text().splitlines() if line.startswith(("[trial ", "screened by"))
                    or "FINISHED earlier" in line]
            for line in arms[printed[i]:]:
                print(f"  {time.perf_counter() - start:6.0f} s  worker {i}: {line}", flush=True)
            printed[i] = len(arms)
        if not running:
            break
        time.sleep(2)
    wall = time.perf_counter() - start
    for p, log in zip(procs, logs, strict=True):
        if p.wait() != 0:
            sys.exit(f"worker {log.name} exited {p.returncode}:\n{log.read_text()[-3000:]}")
    return wall

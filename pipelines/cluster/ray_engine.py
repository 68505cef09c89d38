"""Workers as Ray tasks: each asks for the GPUs (or CPUs) one worker trains on, Ray places it on a node
that has them, and retries it on another node when its node dies (the study requeues the lost arm)."""

from __future__ import annotations

import os
import signal
import socket
import time
from urllib.parse import urlparse

from pipelines.cluster.workers import STOP_S, Census, WorkerCommand
from pipelines.errors import ConfigError, first_line

RETRIES = 3  # attempts Ray makes after a worker's node dies (its `max_retries`)
CONNECT_S = 3.0  # ray.init retries for minutes against an address nobody answers: ask first


def ray_address(configured: str) -> str:
    address = configured or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigError("cluster=ray needs the cluster's address: set RAY_ADDRESS (host:port or ray://host:port), "
                          "or cluster.address in the experiment file")
    return address


def check_answers(address: str) -> None:
    """A Ray head listens at host:port (GCS, or Ray Client for ray://); refused in one line otherwise."""
    parsed = urlparse(address if "://" in address else f"gcs://{address}")
    if not parsed.hostname or not parsed.port:
        raise ConfigError(f"cluster=ray: '{address}' is not host:port or ray://host:port")
    try:
        socket.create_connection((parsed.hostname, parsed.port), timeout=CONNECT_S).close()
    except OSError as exc:
        raise ConfigError(f"cluster=ray: no Ray cluster answers at {address} ({exc.strerror or exc}); "
                          "start one (`ray start --head`) or point RAY_ADDRESS at it") from None


def _task():
    """The worker task, defined in a closure so that Ray ships it by value: a node needs freezeframe's
    environment (an image, a shared venv), not this module on its import path."""
    def freezeframe_worker(argv, cwd, python, env):
        import ctypes
        import os
        import signal
        import subprocess
        import sys
        import time

        import ray

        node = ray.get_runtime_context().get_node_id()

        def die_with_task():  # a worker whose task dies with its node must not run on, unseen (Linux)
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        full = {**os.environ, **env, "FREEZEFRAME_WORKER": f"ray:{node[:12]}"}
        for leaked in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            full.pop(leaked, None)
        if not os.access(python, os.X_OK):  # an image whose Python is elsewhere: the one that runs Ray here
            python = sys.executable
        process = subprocess.Popen([python, "-m", "freezeframe", *argv], cwd=cwd if os.path.isdir(cwd) else None,
                                   env=full, preexec_fn=die_with_task)
        try:  # polled, not process.wait(): ray.cancel's KeyboardInterrupt reaches Python between bytecodes only
            while (code := process.poll()) is None:
                time.sleep(0.2)
            return code
        except KeyboardInterrupt:  # ray.cancel: the worker ends its runs KILLED and requeues its trial
            process.terminate()
            process.wait(timeout=60)
            raise

    return freezeframe_worker


class RayEngine:
    name = "ray"

    def __init__(self, address: str):
        check_answers(address)
        try:
            import ray
        except ImportError:
            raise ConfigError("cluster=ray needs Ray on this machine: pip install 'freezeframe[ray]'") from None
        self.ray, self.address = ray, address
        # ray.init sets its own SIGTERM and SIGINT handling in a driver: the launcher keeps its own (both raise
        # KeyboardInterrupt, which cancels the tasks and ends the runs KILLED)
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
        try:
            ray.init(address=address, logging_level="WARNING", configure_logging=True)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise ConfigError(f"cluster=ray: could not join the Ray cluster at {address}: {first_line(exc)}") from None
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        self.remote = ray.remote(_task())
        self.pending: list = []
        self.stopping = False

    def resources(self) -> dict[str, float]:
        return self.ray.cluster_resources()

    def hosts(self) -> set[str]:
        alive = [node for node in self.ray.nodes() if node.get("Alive")]
        return {node["NodeManagerAddress"] for node in alive} | {node["NodeManagerHostname"] for node in alive}

    def submit(self, command: WorkerCommand, count: int) -> None:
        c = command
        options = {"num_cpus": c.cpus, "num_gpus": c.gpus, "max_retries": RETRIES, "name": c.name}
        self.pending += [self.remote.options(**options).remote(list(c.argv), c.cwd, c.python, dict(c.env))
                         for _ in range(count)]

    def census(self) -> Census:
        from ray.exceptions import TaskCancelledError

        census = Census()
        if not self.pending:
            return census
        ready, self.pending = self.ray.wait(self.pending, num_returns=len(self.pending), timeout=0)
        census.alive = len(self.pending)
        for ref in ready:
            try:
                code = self.ray.get(ref)
            except TaskCancelledError:
                continue
            except Exception as exc:  # noqa: BLE001 - a node lost after every retry, a worker process crashed
                if not self.stopping:
                    census.lost += 1
                    print(f"cluster=ray: a worker was lost: {first_line(exc)}", flush=True)
                continue
            if code:
                census.failed.append(f"a Ray worker exited with {code}")
        return census

    def cancel(self) -> None:
        self.stopping = True
        for ref in self.pending:
            self.ray.cancel(ref)  # KeyboardInterrupt in the task: it stops its worker with SIGTERM
        deadline = time.monotonic() + STOP_S
        while self.pending and time.monotonic() < deadline:
            _, self.pending = self.ray.wait(self.pending, num_returns=len(self.pending), timeout=1)
        for ref in self.pending:
            self.ray.cancel(ref, force=True)

    def close(self) -> None:
        self.ray.shutdown()

"""`python -m freezeframe` worker processes for the tests, forked from an interpreter that has already
imported torch, torchvision, timm, scikit-learn, MLflow and Optuna.

The multi-worker and fault tests start about 27 workers; a fresh interpreter spends ~12 s of CPU
importing those libraries before it does anything, and on two cores that CPU is the suite's time. A
forked worker is still a process of its own: its own pid, working folder, environment, stdout, signals
(SIGKILL, SIGTERM, SIGINT reach it as they would any worker) and exit status, and it imports the
project's own modules afresh, so what they read at import (FREEZEFRAME_GRACE_S, MLflow's settings in
tracking/__init__) comes from its environment. What a fresh interpreter does on top (finding and
importing the libraries) stays covered by the tests that go through `mlflow run`, the README's commands
and the installed wheel.

The server side (`python -m tests.preloaded SOCKET EXITS`) is one single-threaded loop: it forks a child
per request and, as each child ends, writes the child's exit status to EXITS/<pid>; the test side reads
that file, as Popen.wait reads the status of its own child.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("freezeframe", "pipelines", "tracking")


class PreloadedProcess:
    """What the tests use of subprocess.Popen, for a child of the preloaded server."""

    def __init__(self, pid: int, output_fd: int, exits: Path):
        self.pid, self.returncode, self._exits = pid, None, exits
        self.stdout = open(output_fd, encoding="utf-8", errors="replace")

    def poll(self) -> int | None:
        if self.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                self.returncode = int((self._exits / str(self.pid)).read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"freezeframe (pid {self.pid})", timeout)
            time.sleep(0.05)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, None]:
        """All its output (stdout and stderr together, as the tests ask of Popen) once it has exited."""
        deadline = None if timeout is None else time.monotonic() + timeout
        chunks = []
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout, selectors.EVENT_READ)
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"freezeframe (pid {self.pid})", timeout)
                if selector.select(left):
                    chunk = os.read(self.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        self.stdout.close()
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 1))
        return b"".join(chunks).decode("utf-8", errors="replace"), None

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """The preloaded server of this test process, started on first use."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="freezeframe-preloaded-"))
        self.address, self.exits = str(self.folder / "socket"), self.folder / "exits"
        self.exits.mkdir()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen([sys.executable, "-m", "tests.preloaded", self.address, str(self.exits)],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        ready = self.process.stdout.readline()  # after its imports
        if ready.strip() != "ready":
            raise RuntimeError(f"the preloaded server did not start: {ready!r}, exit {self.process.poll()}")

    def launch(self, args: list[str], cwd: Path, env: dict[str, str]) -> PreloadedProcess:
        read, write = os.pipe()
        request = json.dumps({"args": args, "cwd": str(cwd), "env": env}).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
            connection.connect(self.address)
            socket.send_fds(connection, [request], [write])
            os.close(write)
            pid = int(connection.recv(64))
        return PreloadedProcess(pid, read, self.exits)

    def stop(self) -> None:
        import shutil

        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)  # its socket and exit files: nothing left in /tmp


_server: list[_Server] = []


def start_worker(args: list[str], cwd: Path, env: dict[str, str]) -> PreloadedProcess:
    """`python -m freezeframe ARGS` in `cwd` with exactly `env`, stdout and stderr together in .stdout;
    SIGINT raises KeyboardInterrupt in it (a suite started in the background inherits SIGINT ignored)."""
    if not _server:
        _server.append(_Server())
    return _server[0].launch(args, cwd, env)


def stop() -> None:
    while _server:
        _server.pop().stop()


def _serve(address: str, exits: Path) -> None:
    # everything a worker imports: the commands, and the training stack their arms and trials load
    import freezeframe.child_run  # noqa: F401
    import freezeframe.compare  # noqa: F401
    import freezeframe.predict  # noqa: F401
    import freezeframe.rank  # noqa: F401
    import freezeframe.search  # noqa: F401
    import freezeframe.train  # noqa: F401
    import freezeframe.training_run  # noqa: F401

    for name in [name for name in sys.modules if name.split(".")[0] in OURS]:
        del sys.modules[name]  # each child imports the project afresh, reading its own environment
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(64)
    print("ready", flush=True)
    listener.settimeout(0.1)  # wakes to reap ended children between requests
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        with contextlib.suppress(TimeoutError):
            connection, _ = listener.accept()
            message, fds, _, _ = socket.recv_fds(connection, 1 << 20, 1)
            request = json.loads(message)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _child(request, fds[0])  # never returns: exits as the worker would
            os.close(fds[0])
            connection.sendall(str(pid).encode())
            connection.close()
        while True:  # reap the children that ended, recording each one's status for its test
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            scratch = exits / f".{pid}"
            scratch.write_text(str(os.waitstatus_to_exitcode(status)))
            scratch.rename(exits / str(pid))


def _child(request: dict, output_fd: int) -> None:
    if request.get("watch"):  # tests/preloaded_python.py's pid: the worker dies with it, as with its parent
        threading.Thread(target=_die_with, args=(request["watch"],), daemon=True).start()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    os.close(output_fd)
    stdin = os.open(os.devnull, os.O_RDONLY)
    os.dup2(stdin, 0)
    os.close(stdin)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the server's handler
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as a fresh interpreter does, even if inherited ignored
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = request["cwd"]  # as `python -m` sets it
    sys.argv = [str(ROOT / "freezeframe" / "__main__.py"), *request["args"]]
    from freezeframe.cli import main

    try:
        code = main(request["args"])
    except SystemExit as exc:
        code = exc.code
    sys.exit(code)  # through the interpreter's own exit: atexit handlers and flushes, as in a real worker


def _die_with(pid: int) -> None:
    """Kill this worker once `pid` is gone. A SIGKILLed shim may stay a zombie for a while (its Ray worker
    parent died with it, and whoever inherits it reaps when it will): a zombie counts as gone."""
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            state = "gone"
        if state in ("gone", "Z", "X"):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.2)


def python_shim(folder: Path) -> str:
    """An executable that stands in for `python` (cluster.python): `<it> -m freezeframe ARGS` runs as a fork
    of this process's preloaded server (tests/preloaded_python.py); FREEZEFRAME_PRELOADED=address() tells
    it where the server is."""
    shim = folder / "python"
    shim.write_text(f'#!/bin/sh\nexec {sys.executable} -S {ROOT / "tests" / "preloaded_python.py"} "$@"\n')
    shim.chmod(0o755)
    return str(shim)


def address() -> str:
    """The running server's socket and exits folder, as tests/preloaded_python.py reads them from
    FREEZEFRAME_PRELOADED (started here if this process has none yet)."""
    if not _server:
        _server.append(_Server())
    return f"{_server[0].address}{os.pathsep}{_server[0].exits}"


if __name__ == "__main__":
    _serve(sys.argv[1], Path(sys.argv[2]))

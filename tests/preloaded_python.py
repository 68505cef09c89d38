"""A stand-in for `python` that the engine tests give their workers (cluster.python): `<this> -m freezeframe
ARGS` asks the preloaded server (tests/preloaded.py, its socket and exits folder in FREEZEFRAME_PRELOADED)
to fork `python -m freezeframe ARGS` with this process's folder, environment and stdout, forwards SIGTERM
and SIGINT to it, and exits with its status. The worker dies with this process (a Ray task killed with its
node, Slurm's SIGKILL after KillWait): it watches this pid. Only the standard library: this process starts
in milliseconds, the fork skips the ~8 s of CPU a fresh interpreter spends importing torch, timm, MLflow.

    python -S tests/preloaded_python.py -m freezeframe compare ...
"""

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path


def main() -> int:
    if sys.argv[1:3] != ["-m", "freezeframe"]:
        print(f"preloaded_python: only `-m freezeframe ...`, got {sys.argv[1:3]}", file=sys.stderr)
        return 2
    address, exits = os.environ["FREEZEFRAME_PRELOADED"].split(os.pathsep)
    request = json.dumps({"args": sys.argv[3:], "cwd": os.getcwd(), "env": dict(os.environ), "watch": os.getpid()})
    sys.stdout.flush()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as connection:
        connection.connect(address)
        socket.send_fds(connection, [request.encode()], [1])  # the worker writes to this process's stdout
        pid = int(connection.recv(64))
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _: os.kill(pid, received))
    status = Path(exits) / str(pid)
    while not status.exists():
        time.sleep(0.1)
    return int(status.read_text())


if __name__ == "__main__":
    sys.exit(main())

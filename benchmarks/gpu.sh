#!/usr/bin/env bash
# GPU readiness from a fresh copy of the repository, in one command on any CUDA machine:
#
#   benchmarks/gpu.sh [--out bench-gpu.md] [--budget-s 420] [--workers 8]
#
# Without .venv it first runs `make install`: the project's venv from requirements.txt and constraints.txt
# (the pinned torch is a CUDA build; PYTHON=python3.x picks another interpreter than python3.11). Then
# benchmarks/bench_gpu.py with these arguments: about 8 minutes on one GPU, one Markdown table printed and
# written to --out (relative to the folder you run this from); exit 1 if a part failed; without CUDA, a
# message and exit 0.
# The device machine may have no network: `make install` cannot download anything there, so the venv must
# already exist in the copy (built on that machine, or on an identical one, while it had network).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$root/.venv/bin/python" ]; then
  make -C "$root" install
fi
export MLFLOW_DISABLE_TELEMETRY=true HF_HUB_DISABLE_TELEMETRY=1
exec "$root/.venv/bin/python" "$root/benchmarks/bench_gpu.py" "$@"

"""benchmarks/bench_gpu.py without a GPU: it says so and exits 0; a part that fails is its own FAILED row.

The --cpu-smoke run (every part on the CPU, the search through `freezeframe search`) takes 1.5-3 min on
two busy cores, so it is not a test here: run `.venv/bin/python benchmarks/bench_gpu.py --cpu-smoke`.
"""

import importlib.util
import os
import subprocess
import sys
from argparse import Namespace

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_gpu.py"


def test_without_cuda_it_measures_nothing_and_exits_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine that has one
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "t.md")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("bench_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False): "
                                   "nothing measured")
    assert not (tmp_path / "t.md").exists()


def test_a_failing_part_is_a_failed_row_and_the_next_part_runs(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_gpu", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    args = Namespace(deadline=float("inf"), cpu_smoke=True, amp="off (CPU)", workers=0)

    def part_train(args, tmp):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")

    def part_cache(args, tmp):
        return bench.Row("cache", "extraction", "10", "9", "0.90")

    rows = [bench.guarded(part_train, args, "", 0), bench.guarded(part_cache, args, "", 0)]
    assert [r.failed for r in rows] == [True, False]
    table = bench.table(args, rows)
    assert "| train | — | — | — | — | **FAILED** RuntimeError: CUDA error: an illegal memory access was encountered; " \
           in table
    assert "| cache | extraction | 10 | 9 | 0.90 |" in table and "more detail" not in table
    skipped = bench.guarded(part_cache, Namespace(deadline=0.0), "", 60)
    assert skipped.what == "SKIPPED" and not skipped.failed

"""Peak memory of a stretch of work, on the device that does it: what the CPU guard, the per-run
`perf/peak_memory_mb` and the batch-size ceiling probe all measure, one way.

CUDA: the caching allocator's peak (`torch.cuda.max_memory_allocated`). CPU: the process's peak
resident set (VmHWM, which getrusage's ru_maxrss reports too); Linux lets a process reset it
(`/proc/self/clear_refs`), so a long-lived worker measures each run, and each probe, on its own.
"""

from __future__ import annotations

import ctypes
import resource

import torch

MB = 1024 * 1024
_CLEAR_REFS = "/proc/self/clear_refs"


def reset_peak(device: torch.device) -> None:
    """From now on, peak_mb(device) reports the peak since this call."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    _trim_heap()  # memory freed earlier goes back to the OS, so the new peak starts from what is in use
    try:
        with open(_CLEAR_REFS, "w") as clear:
            clear.write("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0)
    except OSError:  # not Linux, or not allowed: the peak stays the process's lifetime peak
        pass


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def in_use_mb(device: torch.device) -> float:
    """Memory held now: CUDA tensors, or this process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / MB
    import psutil

    return psutil.Process().memory_info().rss / MB


def available_mb(device: torch.device, limit_mb: int = 0) -> float:
    """What this process may grow to: the CPU guard's limit when set; else the device's free memory
    plus what this process already holds (a CPU run's peak is its whole resident set)."""
    if limit_mb:
        return float(limit_mb)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free / MB + torch.cuda.memory_reserved(device) / MB
    import psutil

    return psutil.virtual_memory().available / MB + in_use_mb(device)


def check_limit(limit_mb: int) -> None:
    """The CPU counterpart of CUDA's out-of-memory error: fail the run before the machine swaps."""
    if limit_mb:
        peak = peak_mb(torch.device("cpu"))
        if peak > limit_mb:
            raise MemoryError(f"peak memory {peak:.0f} MB is over train.memory_limit_mb {limit_mb}")


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass

"""Device choice, seeding, mixed precision and memory: the parts of a run that depend on the hardware.

Peak memory of a stretch of work, on the device that does it: what the CPU guard, the per-run
`perf/peak_memory_mb` and the batch-size ceiling probe all measure, one way.

CUDA: the caching allocator's peak (`torch.cuda.max_memory_allocated`). CPU: the process's peak
resident set (VmHWM, which getrusage's ru_maxrss reports too); Linux lets a process reset it
(`/proc/self/clear_refs`), so a long-lived worker measures each run, and each probe, on its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import random
import resource

import numpy as np
import torch

from pipelines.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """auto → cuda, then mps, then cpu; an explicit device that is absent is an error, not a fallback."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device '{name}' is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available here; use auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device is '{name}' but MPS is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too


def _amp_dtype(device: torch.device) -> torch.dtype:
    # including_emulation=False: pre-Ampere GPUs (T4, V100) "support" bf16 only by slow emulation
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def autocast_context(device: torch.device, amp: bool):
    """Mixed precision on CUDA only: CPU autocast is slower than float32 for these convnets."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=_amp_dtype(device))
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """Loss scaling is needed for float16 only; bfloat16 has float32's range."""
    enabled = amp and device.type == "cuda" and _amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=enabled)


def free_memory() -> None:
    """After a failed or finished child: an out-of-memory arm or trial must not starve the next one."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# Peak memory (see the module's docstring)
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

"""Device choice, seeding and mixed precision: the parts of a run that depend on the hardware."""

from __future__ import annotations

import contextlib
import random

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


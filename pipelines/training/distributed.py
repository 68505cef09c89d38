"""One run on N processes: data-parallel training under PyTorch's elastic launcher (`torchrun`).

`train.devices: N` starts the run's command again under `torch.distributed.run` (`launch`), or a user
runs `torchrun --nproc_per_node=N -m freezeframe train ...` directly; either way each process finds its
rank in the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). gloo on CPU, NCCL on CUDA.

Each epoch's metrics equal one process's over the same examples: the training split is one seeded
permutation per epoch (the same as the one-process loader draws) dealt out round-robin; a process with
fewer images repeats its first ones so that every process takes the same number of steps (as
DistributedSampler pads), and those repeats weigh nothing: not in the loss, not in the metrics
(`real_in_batch`, `loss_weight`). Validation and test are cut into contiguous shards, and every pass's
predictions are gathered in process order, so the test predictions come back in the split's order.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from pipelines.data.shards import ShardSampler
from pipelines.errors import ConfigError, PeerLost, StoppedByProcessZero, first_line
from pipelines.processes import process_rank, world_size  # torch-free, for the command line; used here and by callers


def is_main() -> bool:
    """Process 0 (or the only process): the one that logs, checkpoints and prints."""
    return process_rank() == 0


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_devices(devices: int, device: torch.device) -> None:
    """What the config cannot know: the machine has the devices asked for (batch and count: config.validate)."""
    here = int(os.environ.get("LOCAL_WORLD_SIZE", devices))  # this machine's processes (torchrun: several nodes)
    if devices > 1 and device.type == "cuda" and here > torch.cuda.device_count():
        raise ConfigError(f"train.devices is {devices} but this machine has {torch.cuda.device_count()} CUDA "
                          "device(s)")
    if devices > 1 and device.type == "mps":
        raise ConfigError("train.devices > 1 needs CUDA (NCCL) or the CPU (gloo); MPS trains in one process")


def start(device: torch.device) -> torch.device:
    """Join the process group torchrun set up (no-op in one process); returns this process's device."""
    if world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # N processes on the CPU: share its cores, not N x all of them
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size()))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The network as DDP sees it, built again whenever its trainable parameters change (a thaw):
    DDP registers the parameters that require grad when it is built."""
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def loss_weight(loader, step: int, local: int) -> float:
    """The factor on a process's mean loss over its `local` real images at training step `step` that makes DDP's
    gradient (its average over the N processes) the mean over the step's global batch, as in one process: in
    the last step the processes hold unequal parts of the batch, or none, and DDP divides by N regardless."""
    if not active() or not isinstance(loader.sampler, ShardSampler):
        return 1.0
    world = world_size()
    full = loader.batch_size * world
    return local * world / min(full, loader.sampler.size - step * full)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's tensor, concatenated in process order (sizes may differ); itself in one process."""
    if not active():
        return tensor
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat(parts).to(tensor.device)


def total(value: float) -> float:
    """The sum of `value` over processes."""
    if not active():
        return value
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return float(sum(parts))


@contextlib.contextmanager
def peers_watched() -> Iterator[None]:
    """A collective that fails because another process died (gloo's transport, NCCL's DistBackendError) stops
    this process as interrupted (PeerLost): its run ends KILLED and resumable, as the run was, not FAILED for a
    fault of its own. Elastic's monitor takes the remaining processes down next."""
    try:
        yield
    except RuntimeError as exc:
        if world_size() > 1 and (isinstance(exc, dist.DistError) or "gloo/transport" in str(exc)):
            raise PeerLost(f"another process of this {world_size()}-process run died "
                           f"({first_line(exc, limit=120)})") from exc
        raise


def stop_together(error: Exception | None) -> None:
    """After an epoch's listeners, which run on process 0 alone: when one of them stopped the run (Optuna
    pruned the trial, the tracker failed), every process stops at the same point, process 0 raising `error` and
    the others StoppedByProcessZero, instead of waiting in the next epoch's first collective."""
    if active():
        said = [first_line(error) if error is not None else None]
        dist.broadcast_object_list(said, src=0)
        if error is None and said[0] is not None:
            raise StoppedByProcessZero(f"rank 0 stopped the run: {said[0]}")
    if error is not None:
        raise error


def same_buffers(model: nn.Module) -> None:
    """Process 0's buffers (BatchNorm's running statistics) on every process, after a training pass: each process's
    last forward updated its own, and every process must evaluate the model process 0 logs and saves."""
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def stop() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()

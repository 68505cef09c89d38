"""Each process's share of a split under data-parallel training (pipelines/training/distributed.py): the
training split dealt round-robin from one seeded permutation, evaluation splits cut into contiguous parts.
Alone, a process's share is the whole split. Here, beside the loaders, so that data/ needs nothing of
training/."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, Subset

from pipelines.processes import process_rank, world_size


class ShardSampler(Sampler[int]):
    """This process's part of one seeded permutation per epoch: indices[rank::world], then its own first
    indices again up to ceil(size / world), so that every process takes the same number of steps (DDP needs
    each to join every gradient all-reduce, and a process that sat out a step would skip its optimizer's
    update). Every rank, and a one-process run with the same seed, draws the same permutation from the same
    generator (which a checkpoint restores), so global batch k holds the one-process run's batch k."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.generator = size, generator

    def __iter__(self) -> Iterator[int]:
        # torch's RandomSampler itself draws the permutation: the same draws from the generator as the
        # one-process loader makes (it consumes one more randperm per epoch than the permutation needs)
        order = list(RandomSampler(range(self.size), generator=self.generator))
        mine = order[process_rank()::world_size()]
        return iter(mine + mine[:len(self) - len(mine)])

    def __len__(self) -> int:
        return -(-self.size // world_size())

    def real(self) -> int:
        """How many of this process's indices are its own, not repeats."""
        return len(range(process_rank(), self.size, world_size()))


def real_in_batch(loader, step: int, size: int) -> int:
    """How many leading images of this process's training batch `step` are real, not ShardSampler's repeats."""
    if not isinstance(loader.sampler, ShardSampler):
        return size
    return max(0, min(size, loader.sampler.real() - step * loader.batch_size))


def eval_shard(dataset: Dataset) -> Dataset:
    """This process's contiguous part of an evaluation split (gathered back in process order)."""
    if world_size() <= 1:
        return dataset
    size, world, r = len(dataset), world_size(), process_rank()
    return Subset(dataset, range(r * size // world, (r + 1) * size // world))

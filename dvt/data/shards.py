"""The training batches of one process among several (`dvt train --processes N`, DDP).

A run trains on the same global batches whatever the process count: `ShardedBatches` draws the
single-process loader's shuffled batches from the same generator, with the same calls in the same
order, and hands rank r the r-th equal slice of each. DDP averages the ranks' gradients, so a step
sees the gradient of the one-process step (up to float rounding: the sums run in another order).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler


class ShardedBatches(Sampler[list[int]]):
    """Rank `rank`'s slice (batch_size // world indices) of every batch that
    `DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=generator)` yields.

    The batches come from the very samplers that DataLoader builds for shuffle=True, on the same
    generator, so every draw is the one-process loader's: per epoch, `randperm(n)` when the first batch
    is asked for and one more (discarded) `randperm(n)` when the sampler runs out. The DataLoader that
    takes this as `batch_sampler` must get the same `generator`, `num_workers` and persistence: its
    iterator draws the workers' base seed from that generator before the first batch (each epoch,
    or with persistent workers only when the loader starts), in both loaders alike.
    """

    def __init__(self, data_source: Sized, *, batch_size: int, generator: torch.Generator, rank: int,
                 world: int) -> None:
        if batch_size % world or not 0 <= rank < world:
            raise ValueError(f"a batch of {batch_size} does not split into {world} slices, or rank {rank} is "
                             f"not one of them")
        self.batches = BatchSampler(RandomSampler(data_source, generator=generator), batch_size, drop_last=True)
        self.size = batch_size // world
        self.start = rank * self.size

    def __iter__(self) -> Iterator[list[int]]:
        # A generator, as RandomSampler's __iter__ is: nothing is drawn until the first batch is asked for.
        for batch in self.batches:
            yield batch[self.start:self.start + self.size]

    def __len__(self) -> int:
        return len(self.batches)


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A 63-bit seed of its own for each (seed, rank, ...), hashed: seed + rank would give seed 42's
    rank 1 the stream of seed 43's rank 0."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def seed_rank(seed: int, rank: int, *more: int) -> None:
    """Seed python's, numpy's and torch's global generators for rank `rank` (> 0).

    Augmentation (random crops, RandAugment, erasing, mixup) and drop-path draw from them per image of
    the process's slice. Seeded alike, every rank would draw what rank 0 draws: the i-th image of each
    slice would get the same crop and the same dropped blocks.
    """
    s = rank_seed(seed, rank, *more)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def seed_worker_of_rank(rank: int, worker_id: int) -> None:
    """worker_init_fn of rank `rank`'s loader: its workers' streams apart from the other ranks'.

    torch seeds worker w's python, numpy and torch generators from base + w, the base drawn from the
    loader's generator, which is the same on every rank (it also orders the data). Rank 0 keeps torch's
    seeds, as one process has them.
    """
    if rank > 0:
        seed_rank(torch.initial_seed(), rank)

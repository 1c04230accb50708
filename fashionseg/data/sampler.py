"""A shuffling sampler whose order depends only on (seed, epoch), like DistributedSampler."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler):
    """Yields ``(index, epoch)`` in a permutation drawn from ``seed + epoch``.

    Lightning calls ``set_epoch`` before every epoch (also the first one after a resume), so
    epoch N visits the same images in the same order whether or not the run was interrupted.
    The epoch travels with each index so that the dataset can seed that item's augmentation
    from (seed, epoch, index), the same in any DataLoader worker.
    """

    def __init__(self, length: int, seed: int = 0):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        epoch = self.epoch
        for i in torch.randperm(self.length, generator=generator).tolist():
            yield i, epoch

    def __len__(self) -> int:
        return self.length

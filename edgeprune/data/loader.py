"""Deterministic mini-batch iteration: the shuffle of epoch e depends only on (seed, e), so a resumed run sees the
same batches as an uninterrupted one."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ._registry import TensorSplit


class Batches:
    """Mini-batches of a dataset. Tensor datasets are sliced directly (fast); others go through a DataLoader.

    ``rank``/``world_size`` shard each epoch's permutation for data-parallel training (every rank sees a disjoint
    slice of the same global order, padded by wrap-around so all ranks take the same number of steps).
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ):
        if batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank:: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._order())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        g = torch.Generator().manual_seed(self.seed * 7_919 + self.epoch + 1)
        if isinstance(self.dataset, TensorSplit):
            for start in range(0, len(order), self.batch_size):
                idx = order[start: start + self.batch_size]
                if self.drop_last and len(idx) < self.batch_size:
                    break
                x, y = self.dataset.x[idx], self.dataset.y[idx]
                if self.augment is not None:
                    x = self.augment(x, g)
                yield x, y
        else:
            subset = torch.utils.data.Subset(self.dataset, order.tolist())
            loader = torch.utils.data.DataLoader(
                subset, batch_size=self.batch_size, shuffle=False, drop_last=self.drop_last,
                num_workers=self.num_workers,
            )
            for x, y in loader:
                yield x, y

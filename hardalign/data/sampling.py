"""Epoch orders and distributed sharding of training batches: one mechanism for every task.

Every training set is read the same way:

1. :func:`epoch_order`: a permutation of the examples drawn from a private ``torch.Generator``
   seeded with ``(seed, epoch)`` (the global RNGs are never touched, so resuming mid-epoch
   replays the same order);
2. the order is cut into *global* batches (optionally after sorting by length inside pools, see
   :class:`BucketBatchSampler`);
3. :func:`shard`: rank ``r`` of ``world_size`` takes the ``r``-th contiguous slice of every global
   batch. With equal slices, averaging the ranks' mean-over-batch gradients (what
   DistributedDataParallel does) equals the single-process gradient on the whole global batch,
   and every rank yields the same number of batches.

:func:`shard_batches` is the length-agnostic case (SBN, glimpse tasks); :class:`BucketBatchSampler`
adds length bucketing for speech.

Example:
    >>> [b.tolist() for b in shard_batches(6, 4, seed=0, epoch=0, shuffle=False, drop_last=False)]
    [[0, 1, 2, 3], [4, 5]]
    >>> [b.tolist() for b in shard_batches(6, 4, seed=0, epoch=0, rank=1, world_size=2, shuffle=False, drop_last=False)]
    [[2, 3], [5]]
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["epoch_generator", "epoch_order", "global_batches", "shard", "shard_batches", "BucketBatchSampler"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` that is a deterministic function of ``(seed, epoch)``."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))


def epoch_order(num_examples: int, generator: torch.Generator | None) -> torch.Tensor:
    """``[num_examples]`` long: a permutation drawn from ``generator``, or the natural order for ``None``."""
    if generator is None:
        return torch.arange(num_examples)
    return torch.randperm(num_examples, generator=generator)


def global_batches(order: torch.Tensor, batch_size: int, *, world_size: int = 1, drop_last: bool) -> list[torch.Tensor]:
    """Cut ``order`` into global batches of ``batch_size``.

    A last incomplete batch is dropped with ``drop_last``; otherwise, when it holds fewer examples
    than ``world_size``, it is padded from the start of ``order`` so that no rank's slice is empty.
    """
    if batch_size < 1 or len(order) < 1:
        raise ValueError(f"batch_size and the number of examples must be >= 1, got {batch_size}, {len(order)}")
    if batch_size % world_size:
        raise ValueError(f"batch_size={batch_size} (the global batch) must be divisible by world_size={world_size}")
    batches = list(torch.split(order, batch_size))
    if len(batches[-1]) < batch_size:
        if drop_last:
            batches.pop()
        elif len(batches[-1]) < world_size:
            batches[-1] = torch.cat([batches[-1], order[: world_size - len(batches[-1])]])
    return batches


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (``torch.tensor_split``: as even as possible)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    return torch.tensor_split(batch, world_size)[rank]


def shard_batches(
    num_examples: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Iterator[torch.Tensor]:
    """Yield this rank's example indices for each global batch of one epoch.

    Args:
        num_examples: size of the training set.
        batch_size: the global batch size; must be divisible by ``world_size``.
        seed, epoch: select the permutation (:func:`epoch_generator`).
        rank, world_size: which shard (:func:`shard`).
        shuffle: permute (``False``: natural order).
        drop_last: drop a last incomplete global batch (otherwise it is split as evenly as
            possible; ranks then see unequal sizes).

    Yields:
        ``[batch_size // world_size]`` long tensors of indices.

    Raises:
        ValueError: ``batch_size`` or ``num_examples`` below 1, or ``batch_size`` not divisible by
            ``world_size``.

    Example:
        >>> [len(b) for b in shard_batches(10, 4, seed=0, epoch=0, rank=1, world_size=2)]
        [2, 2]
    """
    if batch_size < 1 or num_examples < 1:
        raise ValueError(f"shard_batches(): batch_size and num_examples must be >= 1, got {batch_size}, {num_examples}")
    order = epoch_order(num_examples, epoch_generator(seed, epoch) if shuffle else None)
    for batch in global_batches(order, batch_size, world_size=world_size, drop_last=drop_last):
        yield shard(batch, rank, world_size)


@dataclass(eq=False, repr=False)
class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length utterances, reshuffled per epoch, sharded over DDP ranks.

    The epoch's :func:`epoch_order` is cut into pools of ``bucket_size`` global batches (a global
    batch is ``batch_size * num_replicas`` utterances), each pool is sorted by length and cut into
    global batches, the batch order is shuffled with the same generator, and every rank takes its
    :func:`shard` of each global batch. Without ``shuffle`` the batches are contiguous in length
    order. Every rank gets the same number of batches.

    Args:
        lengths: per-utterance length (model steps).
        batch_size: utterances per batch on each rank.
        shuffle: reshuffle every epoch (seeded by ``(seed, epoch)``, see :func:`epoch_generator`).
        seed: base seed.
        bucket_size: batches per sorting pool (larger = less padding, less randomness).
        drop_last: drop a final short global batch.
        num_replicas, rank: DDP sharding.

    Example:
        >>> s = BucketBatchSampler([5, 1, 4, 2, 3], batch_size=2, shuffle=False)
        >>> list(s)
        [[1, 3], [4, 2], [0]]
    """

    lengths: Sequence[int]
    batch_size: int
    _: KW_ONLY
    shuffle: bool = True
    seed: int = 0
    bucket_size: int = 50
    drop_last: bool = False
    num_replicas: int = 1
    rank: int = 0
    epoch: int = field(default=0, init=False)

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.lengths = list(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order is drawn."""
        self.epoch = int(epoch)

    def _batches(self) -> list[list[int]]:
        if not self.lengths:
            return []
        generator = epoch_generator(self.seed, self.epoch) if self.shuffle else None
        order = epoch_order(len(self.lengths), generator)
        lengths = torch.tensor(self.lengths)
        global_size = self.batch_size * self.num_replicas
        pool = global_size * self.bucket_size if self.shuffle else len(order)
        # stable sort inside each pool: equal lengths keep the epoch order
        order = torch.cat([part[torch.sort(lengths[part], stable=True).indices] for part in torch.split(order, pool)])
        batches = global_batches(order, global_size, world_size=self.num_replicas, drop_last=self.drop_last)
        if generator is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return [shard(b, self.rank, self.num_replicas).tolist() for b in batches]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())

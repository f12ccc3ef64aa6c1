"""Seeded, resumable epochs: which training rows a DDP rank sees, and in which order.

Epoch ``e`` of a run with seed ``s`` is fixed by ``(s, e)`` alone, so a resumed run sees the
order an uninterrupted one would have:

* a materialized training split (Ray's object store) is re-ordered per epoch on every rank
  alike — ``randomize_block_order`` with the epoch's seed, then ``split(world, equal=True)``
  (deterministic on a materialized dataset), and each rank takes its own part: every row is seen
  exactly once per epoch across the ranks (up to ``world - 1`` rows the equal split leaves out);
* within a rank, a local shuffle buffer (``iter_torch_batches(local_shuffle_buffer_size=…,
  local_shuffle_seed=…)``) mixes rows across blocks, seeded by ``(s, e, rank)``;
* a streamed split (not materialized) reads its shards in a seeded order that changes every
  epoch (``reader.ray_dataset(file_shuffle_seed=…)``: Ray Data reseeds with each execution) and
  goes through Ray Train's ``streaming_split``, which hands blocks to whichever rank asks first:
  every row still once per epoch, but which rank sees it is not reproducible, and a resumed run
  restarts Ray's execution count, so its first epoch repeats the order of the run's first epoch.

:class:`EpochStream` yields batches forever, epoch after epoch, and keeps the
:class:`DataPosition` (epoch, batches consumed in it) that a checkpoint stores; started from a
saved position it skips the batches of the current epoch that were already consumed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["DataPosition", "EpochStream", "epoch_seed", "epoch_shard", "rank_rows"]


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """A 32-bit seed determined by ``(seed, epoch, *more)`` alone (the same on every process)."""
    return int(np.random.SeedSequence([seed, epoch, *more]).generate_state(1)[0])


@dataclass
class DataPosition:
    """Where a rank is in its data: ``batches`` consumed so far in ``epoch``."""

    epoch: int = 0
    batches: int = 0


def epoch_shard(dataset: Any, *, seed: int, epoch: int, rank: int, world: int, shuffle: bool) -> Any:
    """Rank ``rank``'s part of epoch ``epoch`` of a materialized Ray Dataset.

    Every rank computes the same re-ordered split and keeps its own part, so the parts are
    disjoint and together cover the split (``equal=True`` drops at most ``world - 1`` rows).
    """
    if shuffle:
        dataset = dataset.randomize_block_order(seed=epoch_seed(seed, epoch))
    if world == 1:
        return dataset
    return dataset.split(world, equal=True)[rank]


def rank_rows(dataset: Any, rank: int, world: int) -> torch.Tensor:
    """Rank ``rank``'s rows (column ``x``) of a small materialized Ray Dataset, as one tensor.

    Every ``world``-th row from ``rank`` on: the ranks' parts are disjoint, differ in size by at
    most one row and together hold every row (a validation pass counts each row once). Read once
    per worker, so validating is a loop over tensor slices with no Ray Data execution.
    """
    parts = [batch["x"] for batch in dataset.iter_batches(batch_format="numpy", batch_size=None)]
    if not parts:
        return torch.empty(0)
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts)[rank::world]))


class EmptyEpochError(RuntimeError):
    """An epoch of the training split gave no batch (too few rows for one, or none at all)."""


class EpochStream:
    """Batches from ``open_epoch(epoch)``, epoch after epoch, from ``start`` on; tracks the position."""

    def __init__(self, open_epoch: Callable[[int], Iterable[Any]], start: DataPosition | None = None) -> None:
        self._open_epoch = open_epoch
        start = start or DataPosition()
        self.position = DataPosition(start.epoch, start.batches)

    def __iter__(self) -> Iterator[Any]:
        epoch, skip = self.position.epoch, self.position.batches
        while True:
            consumed = 0
            for batch in self._open_epoch(epoch):
                consumed += 1
                if consumed <= skip:  # consumed before the checkpoint this run resumed from
                    continue
                self.position = DataPosition(epoch, consumed)
                yield batch
            if consumed == 0:
                raise EmptyEpochError(f"the training split yields no batch (epoch {epoch}); is it empty?")
            epoch, skip = epoch + 1, 0
            self.position = DataPosition(epoch, 0)

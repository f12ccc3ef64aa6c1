"""Resumable epochs and per-rank state, without Ray (the Ray runs are in test_train_ray_equivalence)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from rfdist.runtime.checkpoint import TrainingState, load_state, save_state
from rfdist.runtime.epochs import DataPosition, EpochStream, epoch_seed, rank_rows
from rfdist.runtime.worker_state import capture, restore


def _epoch(e: int) -> list[int]:
    """A stand-in for one epoch's batches: 5 ids in an epoch-seeded order."""
    ids = list(range(10 * e, 10 * e + 5))
    random.Random(epoch_seed(0, e)).shuffle(ids)
    return ids


def test_a_stream_restarted_from_its_position_continues_the_uninterrupted_sequence() -> None:
    straight = list(itertools.islice(iter(EpochStream(_epoch)), 17))
    for stop in (1, 4, 5, 6, 12):
        first = EpochStream(_epoch)
        head = list(itertools.islice(iter(first), stop))
        resumed = EpochStream(_epoch, first.position)
        tail = list(itertools.islice(iter(resumed), 17 - stop))
        assert head + tail == straight, stop
    stream = EpochStream(_epoch)
    list(itertools.islice(iter(stream), 7))
    assert stream.position == DataPosition(epoch=1, batches=2)


def test_epoch_seeds_differ_by_epoch_and_are_stable() -> None:
    assert epoch_seed(0, 0) != epoch_seed(0, 1) != epoch_seed(1, 0)
    assert epoch_seed(3, 2, 1) == epoch_seed(3, 2, 1) < 2**32


def test_each_rank_restores_its_own_rng_and_position(tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    states = []
    for rank in (0, 1):
        torch.manual_seed(1000 * rank)
        states.append(capture(rank, cpu, DataPosition(3, rank + 1)))
    expected = []
    for rank in (0, 1):
        torch.manual_seed(1000 * rank)
        expected.append(torch.randn(4))
    save_state(
        tmp_path,
        TrainingState({}, None, None, 1, None, {}, {}, {}, workers=states),  # weights_only round trip
    )
    loaded = load_state(tmp_path).workers
    for rank in (1, 0):
        torch.manual_seed(12345)
        assert restore(loaded, rank, 2, cpu) == DataPosition(3, rank + 1)
        assert torch.equal(torch.randn(4), expected[rank]), rank
    # another world size: the data split cannot be replayed; start the next epoch
    assert restore(loaded, 0, 4, cpu) == DataPosition(4, 0)
    assert restore(loaded, 3, 4, cpu) == DataPosition(4, 0)
    assert restore(None, 0, 2, cpu) is None


@pytest.mark.usefixtures("shared_ray")
def test_each_rank_holds_a_disjoint_balanced_part_of_a_materialized_val_split_covering_every_row() -> None:
    import numpy as np
    import ray.data

    rows = np.arange(2 * 103, dtype=np.float32).reshape(103, 2)  # 103 rows: not a multiple of 2 or 3
    dataset = ray.data.from_numpy(rows).repartition(4).materialize()  # 4 blocks of uneven sizes
    dataset = dataset.map_batches(lambda b: {"x": b["data"]}).materialize()
    for world in (1, 2, 3):
        parts = [rank_rows(dataset, rank, world) for rank in range(world)]
        assert max(p.shape[0] for p in parts) - min(p.shape[0] for p in parts) <= 1
        assert all(p.dtype == torch.float32 and p.shape[1:] == (2,) and p.is_contiguous() for p in parts)
        together = torch.cat(parts)[:, 0].tolist()
        assert sorted(together) == rows[:, 0].tolist()  # every row once
    empty = ray.data.from_numpy(rows[:0]).map_batches(lambda b: {"x": b["data"]}).materialize()
    assert rank_rows(empty, 0, 2).shape[0] == 0

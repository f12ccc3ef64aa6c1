"""Resumable epochs and per-rank state, without Ray (the Ray runs are in test_train_ray_equivalence)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import torch

from rfdist.runtime.checkpoint import TrainingState, load_state, save_state
from rfdist.runtime.epochs import DataPosition, EpochStream, epoch_seed
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

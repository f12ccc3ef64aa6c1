"""A dataset larger than Ray's object store streams through the training path, every row once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rfdist.data.parquet import write_dataset
from rfdist.data.reader import open_dataset
from rfdist.runtime.datasets import ray_dataset, stream_options

pytestmark = pytest.mark.slow

STORE_MB = 80  # Ray's minimum is 75 MiB
ROWS, SHAPE = 200_000, (1, 28, 28)  # 157 MB of uint8 pixels: about 1.9× the object store


def test_dataset_larger_than_the_object_store_streams(tmp_path: Path) -> None:
    import ray
    import torch

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(ROWS, *SHAPE), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(ROWS) % 251  # a per-row tag, so duplicates and drops change the sums
    expected_sum = int(x.sum(dtype=np.int64))
    expected_tags = np.bincount(x[:, 0, 0, 0], minlength=256)
    write_dataset(str(tmp_path / "big"), {"train": {"x": x}}, shard_rows=10_000)
    del x
    info = open_dataset(str(tmp_path / "big"))
    assert ROWS * info.data_dim * info.itemsize > 1.5 * STORE_MB * 2**20

    ray.shutdown()  # this test needs its own small object store, not the worker's shared Ray
    ray.init(
        address="local",
        num_cpus=2,
        object_store_memory=STORE_MB * 2**20,
        include_dashboard=False,
        logging_level="ERROR",
    )
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        from rfdist.runtime.datasets import MATERIALIZE_BYTES, materialize_limit

        # training would stream it (data.materialize=auto), not hold it in the store and spill
        assert ROWS * info.data_dim > materialize_limit(MATERIALIZE_BYTES)
        rows, total, tags = 0, 0, np.zeros(256, np.int64)
        for batch in ray_dataset(info, "train").iter_torch_batches(
            batch_size=1000, **stream_options(torch.device("cpu"))
        ):
            pixels = batch["x"]
            assert pixels.dtype == torch.uint8
            rows += pixels.shape[0]
            total += int(pixels.sum(dtype=torch.int64))
            tags += np.bincount(pixels[:, 0, 0, 0].numpy(), minlength=256)
    finally:
        ray.shutdown()
    assert rows == ROWS and total == expected_sum
    np.testing.assert_array_equal(tags, expected_tags)

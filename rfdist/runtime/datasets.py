"""Ray Data datasets of an rfdist Parquet split, and how Train workers iterate them.

The Parquet layout and schema logic is :mod:`rfdist.data.reader`'s; this module adds Ray:
one read task per shard, a per-epoch file shuffle, the object-store budget.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs
import torch

from rfdist.data.errors import DataError
from rfdist.data.reader import DatasetInfo, feature_rows, tensor_columns

__all__ = ["materialize_limit", "ray_dataset", "stream_options"]


def ray_dataset(info: DatasetInfo, split: str, *, file_shuffle_seed: int | None = None):
    """A Ray Dataset of ``split``: column ``x`` as ``(N, *shape)`` tensors (+ ``label``).

    ``file_shuffle_seed``: read the shards in a seeded random order that changes with every
    execution (epoch) — Ray Data's ``FileShuffleConfig(seed, reseed_after_execution=True)``: the
    per-epoch block order of a split streamed from Parquet.

    uint8 tensor columns are read straight from Parquet (no per-batch conversion: Ray hands
    ``iter_torch_batches`` ndarray views of the Arrow buffers; dequantisation happens on the
    worker's device). Older fixed-size-list columns are relabelled as float32 tensors without a
    copy; only a user's table of plain feature columns is assembled row-wise. Other columns
    (factors, ids) are not read.
    """
    if split not in info.splits:
        raise DataError(f"{info.uri}: no {split!r} split (found {sorted(info.splits)})")
    files, columns = info.splits[split], info.columns()
    if info.tensor:
        return _read_parquet(files, info.filesystem, columns, file_shuffle_seed)
    if info.features:
        return _read_parquet(files, info.filesystem, columns, file_shuffle_seed).map_batches(
            feature_rows,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={"features": info.features, "dim": info.data_dim, "has_label": info.has_label},
        )
    return _read_parquet(files, info.filesystem, columns, file_shuffle_seed).map_batches(
        tensor_columns, batch_format="pyarrow", batch_size=None, fn_kwargs={"shape": info.shape}
    )


def _read_parquet(
    files: list[str],
    filesystem: pafs.FileSystem,
    columns: list[str],
    file_shuffle_seed: int | None = None,
):
    """``ray.data.read_parquet`` of ``files``: one read task (and block) per file, through Ray
    Data's file-fragment reader, with reads free to use every CPU the budget allows.

    Two of Ray Data 2.60's defaults are switched off for this dataset only (the process's
    ``DataContext`` is restored; the dataset keeps its own copy), each measured with
    ``bench/data_stream.py`` on a 2-core machine (32 shards of 10,000 MNIST-sized uint8 rows):

    * the DataSourceV2 reader (``use_datasource_v2``): a listing task that waits seconds
      before the first read, then reads bucketed into two ~120 MB blocks, so nothing overlaps
      (0.2x a raw pyarrow scan; V1 with a task per file: ~0.45x);
    * per-operator resource reservation (``op_resource_reservation_enabled``): with a single
      read operator it held the reads to one task at a time (a concurrency of ~0.9 on 2 CPUs);
      without it both CPUs read (~0.7x). The object-store budget still bounds what is in
      flight, so a dataset larger than the store streams in bounded memory
      (tests/test_data_larger_than_store.py).

    """
    import ray.data
    from ray.data import FileShuffleConfig

    shuffle = None if file_shuffle_seed is None else FileShuffleConfig(seed=file_shuffle_seed)
    context = ray.data.DataContext.get_current()
    previous = (context.use_datasource_v2, context.op_resource_reservation_enabled)
    context.use_datasource_v2, context.op_resource_reservation_enabled = False, False
    try:
        return ray.data.read_parquet(
            files,
            filesystem=filesystem,
            columns=columns,
            override_num_blocks=len(files),
            shuffle=shuffle,
        )
    finally:
        context.use_datasource_v2, context.op_resource_reservation_enabled = previous


def stream_options(device: torch.device) -> dict[str, Any]:
    """``iter_torch_batches`` options for a worker on ``device``: rows stay as stored (uint8).

    On CUDA, batches are pinned and prefetched so the host→device copy overlaps the step.
    """
    if device.type == "cuda":
        return {"prefetch_batches": 4, "pin_memory": True}
    return {"prefetch_batches": 2}


def materialize_limit(limit: int) -> float:
    """Bytes a dataset may take to be held in Ray's object store: ``limit``, and at most half the
    store, so a dataset larger than the store (or near it) streams instead of spilling to disk.
    """
    import ray

    store = ray.cluster_resources().get("object_store_memory", float("inf"))
    return min(limit, store / 2)

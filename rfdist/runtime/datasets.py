"""Ray Data datasets of an rfdist Parquet split, and how Train workers iterate them.

The Parquet layout and schema logic is :mod:`rfdist.data.reader`'s; this module adds Ray:
one read task per shard, a per-epoch file shuffle, the object-store budget. A run's data is
opened and checked on the driver (:func:`prepare_data`) and handed to Ray Train as the
``train``/``val`` datasets of :func:`ray_datasets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch

from rfdist.config import ConfigError, RunConfig
from rfdist.core.builders import ModelSpec
from rfdist.data.errors import DataError
from rfdist.data.reader import DatasetInfo, feature_rows, tensor_columns
from rfdist.runtime.epochs import epoch_seed

__all__ = [
    "MATERIALIZE_BYTES",
    "PreparedData",
    "materialize_limit",
    "materialize_synthetic",
    "prepare_data",
    "ray_dataset",
    "ray_datasets",
    "stream_options",
]

MATERIALIZE_BYTES = 256 * 1024**2
"""Datasets up to this size (and half the object store) are held in Ray's object store."""


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


@dataclass
class PreparedData:
    """A run's dataset, opened and checked against its config on the driver."""

    path: str
    info: Any
    spec: ModelSpec


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Check config against data before any worker starts; materialise synthetic data once.

    Raises :class:`ConfigError` / ``DataError`` with one line naming the key or file.
    """
    from rfdist.data.reader import open_dataset

    if cfg.data.synthetic is not None:  # D is known before anything is written
        from rfdist.data.synthetic import make_synthetic

        cfg.model.spec((make_synthetic(cfg.data.synthetic).data_dim,), cfg.seed)
    data_path = cfg.data.path or materialize_synthetic(cfg)
    try:
        info = open_dataset(data_path, features=cfg.data.features, storage_options=cfg.data.storage_options)
    except DataError as exc:
        missing = "dataset not found" in str(exc)
        hint = " (make it with `rfdist data make NAME --out PATH`)" if missing else ""
        raise DataError(f"data.path: {exc}{hint}") from None
    spec = cfg.model.spec(tuple(info.shape), cfg.seed)
    for split in ("train", "val"):
        if split not in info.splits:
            raise ConfigError(f"data.path: dataset {data_path} has no {split!r} split")
    return PreparedData(path=data_path, info=info, spec=spec)


def ray_datasets(cfg: RunConfig, prepared: PreparedData) -> dict[str, Any]:
    """The ``train``/``val`` Ray Datasets; held in the object store when small (``data.materialize``).

    Re-streaming a small Parquet dataset every epoch costs more than a training step, so
    datasets under :data:`MATERIALIZE_BYTES` are read once (a sweep reads once for all trials).
    A streamed training split reads its shards in a new seeded order every epoch (``data.shuffle``).
    """
    info = prepared.info
    datasets = {split: ray_dataset(info, split) for split in ("train", "val")}
    if cfg.data.materialize != "never":
        rows = [info.rows.get(split) or ds.count() for split, ds in datasets.items()]  # manifest first
        size = sum(rows) * prepared.spec.data_dim * info.itemsize
        if cfg.data.materialize == "always" or size <= materialize_limit(MATERIALIZE_BYTES):
            if cfg.data.shuffle:  # blocks of a batch: the unit each epoch re-orders (rfdist.runtime.epochs)
                datasets["train"] = datasets["train"].repartition(
                    target_num_rows_per_block=cfg.train.batch_size
                )
            return {split: ds.materialize() for split, ds in datasets.items()}
    if cfg.data.shuffle:
        datasets["train"] = ray_dataset(info, "train", file_shuffle_seed=epoch_seed(cfg.seed, 0))
    return datasets


def materialize_synthetic(cfg: RunConfig, root: str | Path = ".rfdist/data") -> str:
    """Write the synthetic dataset a config names to Parquet once (cached by name/seed/rows)."""
    import numpy as np

    from rfdist.data.parquet import write_dataset
    from rfdist.data.synthetic import make_synthetic

    name = cfg.data.synthetic
    target = Path(root).resolve() / f"{name}-seed{cfg.seed}-{cfg.data.train_rows}-{cfg.data.test_rows}"
    if (target / "_MANIFEST.json").exists() or (target / "_SUCCESS").exists():
        return str(target)
    source = make_synthetic(name)
    val_rows = max(1, cfg.data.test_rows // 2)
    splits = {}
    for offset, (split, rows) in enumerate(
        (("train", cfg.data.train_rows), ("val", val_rows), ("test", cfg.data.test_rows))
    ):
        gen = torch.Generator().manual_seed(cfg.seed + offset)
        splits[split] = {"x": source.sample(rows, generator=gen).numpy().astype(np.float32), "label": None}
    write_dataset(str(target), splits)
    return str(target)

"""Read an rfdist Parquet dataset: metadata, a Ray Dataset per split, or plain pyarrow batches.

Example:
    >>> import tempfile, numpy as np
    >>> from rfdist.data.parquet import write_dataset
    >>> out = tempfile.mkdtemp()
    >>> _ = write_dataset(out, {"train": {"x": np.ones((4, 3))}})
    >>> info = open_dataset(out)
    >>> info.data_dim, load_split(info, "train").shape
    (3, torch.Size([4, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from .errors import DataError, arrow_reason
from .parquet import SHAPE_KEY, list_layout

__all__ = [
    "DatasetInfo",
    "arrow_to_numpy",
    "iter_batches",
    "load_split",
    "open_dataset",
    "ray_dataset",
    "schema_shape",
]


@dataclass
class DatasetInfo:
    """What :func:`open_dataset` found: shards per split, row shape and statistics."""

    uri: str
    splits: dict[str, list[str]]
    data_dim: int
    shape: tuple[int, ...]
    has_label: bool
    filesystem: pafs.FileSystem
    features: list[str] | None = None
    rows: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] | None = None

    def columns(self) -> list[str]:
        base = list(self.features) if self.features else ["x"]
        return [*base, "label"] if self.has_label else base


def _short(path: str, root_uri: str) -> str:
    return path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1] if "/" in path else path


def _schema(fs: pafs.FileSystem, path: str, uri: str) -> pa.Schema:
    try:
        return pq.read_schema(path, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"{uri}: {_short(path, uri)} is not a readable Parquet file ({arrow_reason(exc)})"
        ) from None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def schema_shape(schema: pa.Schema, features: list[str] | None, where: str) -> tuple[int, tuple[int, ...]]:
    """``(D, row shape)`` a shard's schema gives (``x`` or ``features``); ``DataError`` naming ``where``."""
    if features:
        missing = [f for f in features if f not in schema.names]
        if missing:
            raise DataError(
                f"{where}: column {missing[0]!r} (data.features) not found; columns are {schema.names}"
            )
        for name in features:
            if not _is_numeric(schema.field(name).type):
                raise DataError(
                    f"{where}: column {name!r} has type {schema.field(name).type}, expected a number"
                )
        dim, shape = len(features), (len(features),)
    else:
        if "x" not in schema.names:
            raise DataError(
                f"{where}: no column 'x' (columns are {schema.names}); name numeric feature columns "
                "with data.features"
            )
        x_type = schema.field("x").type
        if not pa.types.is_fixed_size_list(x_type) or not pa.types.is_floating(x_type.value_type):
            raise DataError(f"{where}: column 'x' has type {x_type}, expected fixed_size_list<float32>[D]")
        dim = x_type.list_size
        meta = (schema.metadata or {}).get(SHAPE_KEY)
        shape = tuple(int(s) for s in meta.decode().split(",")) if meta else (dim,)
        if math.prod(shape) != dim:
            raise DataError(f"{where}: metadata rfdist.shape={shape} does not match vector length {dim}")
    return dim, shape


def open_dataset(
    uri: str, *, features: list[str] | None = None, storage_options: dict[str, Any] | None = None
) -> DatasetInfo:
    """Inspect the dataset at ``uri`` (folder or ``s3://``); raises :class:`DataError` clearly.

    ``features`` names plain numeric columns to assemble into ``x`` (a user's own table).
    """
    layout = list_layout(uri, storage_options)
    split = "train" if "train" in layout.files else sorted(layout.files)[0]
    first = layout.files[split][0]
    schema = _schema(layout.filesystem, first, uri)
    dim, shape = schema_shape(schema, features, f"{uri}: {_short(first, uri)}")
    has_label = "label" in schema.names
    rows: dict[str, int] = {}
    if layout.manifest is not None:
        rows = {s: int(e["rows"]) for s, e in layout.manifest["splits"].items()}
    stats = (layout.manifest or {}).get("stats")
    return DatasetInfo(uri, layout.files, dim, shape, has_label, layout.filesystem, features, rows, stats)


def arrow_to_numpy(table: pa.Table | pa.RecordBatch, features: list[str] | None, dim: int) -> np.ndarray:
    """Rows ``(N, D)`` float32 from column ``x`` (fixed-size lists) or from feature columns."""
    if features:
        return (
            np.column_stack(
                [
                    np.asarray(table.column(f).to_numpy(zero_copy_only=False), dtype=np.float32)
                    for f in features
                ]
            )
            if table.num_rows
            else np.zeros((0, dim), np.float32)
        )
    column = table.column("x")
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = column.flatten().to_numpy(zero_copy_only=False)
    return np.array(values, dtype=np.float32).reshape(-1, dim)


def _to_rows(batch: pa.Table, features: list[str] | None, dim: int, has_label: bool) -> dict[str, np.ndarray]:
    out = {"x": arrow_to_numpy(batch, features, dim)}
    if has_label:
        out["label"] = np.asarray(batch.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    return out


def ray_dataset(info: DatasetInfo, split: str):
    """A Ray Dataset of ``split`` with ``x`` as an (N, D) float32 tensor column (+ ``label``)."""
    import ray.data

    if split not in info.splits:
        raise DataError(f"{info.uri}: no {split!r} split (found {sorted(info.splits)})")
    ds = ray.data.read_parquet(info.splits[split], filesystem=info.filesystem).select_columns(info.columns())
    return ds.map_batches(
        _to_rows,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"features": info.features, "dim": info.data_dim, "has_label": info.has_label},
    )


def iter_batches(info: DatasetInfo, split: str, batch_size: int = 1024) -> Iterator[torch.Tensor]:
    """Batches of ``split`` as float32 tensors ``(n, *shape)`` through pyarrow alone (no Ray)."""
    import pyarrow.dataset as pads

    if split not in info.splits:
        raise DataError(f"{info.uri}: no {split!r} split (found {sorted(info.splits)})")
    dataset = pads.dataset(info.splits[split], filesystem=info.filesystem, format="parquet")
    for batch in dataset.to_batches(columns=info.columns(), batch_size=batch_size):
        if batch.num_rows:
            x = arrow_to_numpy(batch, info.features, info.data_dim)
            yield torch.from_numpy(x).reshape(-1, *info.shape)


def load_split(info: DatasetInfo, split: str, *, labels: bool = False):
    """The whole ``split`` in memory: float32 ``(N, *shape)`` (and int64 labels if asked)."""
    if split not in info.splits:
        raise DataError(f"{info.uri}: no {split!r} split (found {sorted(info.splits)})")
    tables = []
    for path in info.splits[split]:
        try:
            tables.append(pq.read_table(path, filesystem=info.filesystem, columns=info.columns()))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{info.uri}: cannot read {_short(path, info.uri)}: {str(exc)[:120]}") from None
    table = pa.concat_tables(tables)
    x = torch.from_numpy(arrow_to_numpy(table, info.features, info.data_dim)).reshape(-1, *info.shape)
    if labels:
        y = (
            torch.from_numpy(np.asarray(table.column("label").to_numpy(), dtype=np.int64))
            if info.has_label
            else None
        )
        return x, y
    return x

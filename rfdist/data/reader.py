"""Read an rfdist Parquet dataset: metadata, plain pyarrow batches, or a split in memory.

Ray Data datasets of a split are built by :mod:`rfdist.runtime.datasets`.

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

from rfdist.data.errors import DataError
from rfdist.data.parquet import SHAPE_KEY, list_layout

__all__ = [
    "DatasetInfo",
    "arrow_to_numpy",
    "feature_rows",
    "is_tensor_type",
    "iter_batches",
    "load_split",
    "open_dataset",
    "tensor_columns",
    "x_layout",
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
    dtype: str = "float32"  # of column ``x`` as stored: "uint8" (image tensors) or "float32"
    tensor: bool = False  # ``x`` is an ``arrow.fixed_shape_tensor`` column

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

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
            f"{uri}: {_short(path, uri)} is not a readable Parquet file ({str(exc)[:120]})"
        ) from None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


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
    where = f"{uri}: {_short(first, uri)}"
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
        dtype, tensor = "float32", False
    else:
        if "x" not in schema.names:
            raise DataError(
                f"{where}: no column 'x' (columns are {schema.names}); name numeric feature columns "
                "with data.features"
            )
        dim, shape, dtype, tensor = x_layout(schema, where)
        manifest_shape = ((layout.manifest or {}).get("splits", {}).get(split) or {}).get("shape")
        if manifest_shape is not None and tuple(manifest_shape) != shape:
            raise DataError(
                f"{where}: column 'x' holds {'tensors' if tensor else 'rows'} of shape {shape}, "
                f"the manifest says {tuple(manifest_shape)}"
            )
    has_label = "label" in schema.names
    rows: dict[str, int] = {}
    if layout.manifest is not None:
        rows = {s: int(e["rows"]) for s, e in layout.manifest["splits"].items()}
    stats = (layout.manifest or {}).get("stats")
    return DatasetInfo(
        uri,
        layout.files,
        dim,
        shape,
        has_label,
        layout.filesystem,
        features,
        rows,
        stats,
        dtype="float32" if features else dtype,
        tensor=bool(tensor and not features),
    )


def is_tensor_type(t: pa.DataType) -> bool:
    """Arrow's canonical ``arrow.fixed_shape_tensor`` extension type."""
    return isinstance(t, pa.FixedShapeTensorType)


def x_layout(schema: pa.Schema, where: str) -> tuple[int, tuple[int, ...], str, bool]:
    """``(D, row shape, stored dtype, is tensor)`` of column ``x``; DataError when unusable."""
    x_type = schema.field("x").type
    if is_tensor_type(x_type):
        value = x_type.value_type
        if value != pa.uint8() and not pa.types.is_floating(value):
            raise DataError(f"{where}: column 'x' holds tensors of {value}, expected uint8 (or float)")
        shape = tuple(int(s) for s in x_type.shape)
        if value == pa.uint8() and len(shape) != 3:
            raise DataError(f"{where}: column 'x' holds uint8 tensors of shape {shape}, expected (C, H, W)")
        return math.prod(shape), shape, "uint8" if value == pa.uint8() else "float32", True
    if not pa.types.is_fixed_size_list(x_type) or not pa.types.is_floating(x_type.value_type):
        raise DataError(
            f"{where}: column 'x' has type {x_type}, expected fixed_size_list<float32>[D] "
            "or arrow.fixed_shape_tensor<uint8>[C,H,W]"
        )
    dim = x_type.list_size
    meta = (schema.metadata or {}).get(SHAPE_KEY)
    shape = tuple(int(s) for s in meta.decode().split(",")) if meta else (dim,)
    if math.prod(shape) != dim:
        raise DataError(f"{where}: metadata rfdist.shape={shape} does not match vector length {dim}")
    return dim, shape, "float32", False


def arrow_to_numpy(
    table: pa.Table | pa.RecordBatch, features: list[str] | None, dim: int, *, dtype: Any = np.float32
) -> np.ndarray:
    """Rows ``(N, D)`` from column ``x`` (tensors or fixed-size lists) or from feature columns.

    ``dtype=None`` keeps the stored type (uint8 pixels stay uint8).
    """
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
    if is_tensor_type(column.type):
        values = (
            column.to_numpy_ndarray()
            if len(column)
            else np.zeros((0, dim), column.type.value_type.to_pandas_dtype())
        )
    else:
        values = column.flatten().to_numpy(zero_copy_only=False)
    values = values.reshape(-1, dim)
    return values if dtype is None else values.astype(dtype, copy=False)


def tensor_columns(batch: pa.Table, shape: tuple[int, ...]) -> pa.Table:
    """Column ``x`` of fixed-size float lists → float32 ``arrow.fixed_shape_tensor`` (no copy).

    The tensor type's storage *is* a fixed-size list, so this only relabels the buffers; Ray
    then hands ``iter_torch_batches`` an ndarray view instead of stacking a list per row.
    """
    tensor_type = pa.fixed_shape_tensor(pa.float32(), shape)
    column = batch.column("x")
    chunks = [
        pa.ExtensionArray.from_storage(tensor_type, chunk.cast(tensor_type.storage_type))
        for chunk in column.chunks
    ]
    return batch.set_column(
        batch.schema.get_field_index("x"), "x", pa.chunked_array(chunks, type=tensor_type)
    )


def feature_rows(batch: pa.Table, features: list[str] | None, dim: int, has_label: bool) -> dict[str, np.ndarray]:
    """One batch of a table of plain numeric columns as ``x`` rows (+ ``label``), for Ray Data."""
    out = {"x": arrow_to_numpy(batch, features, dim)}
    if has_label:
        out["label"] = np.asarray(batch.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    return out


def iter_batches(info: DatasetInfo, split: str, batch_size: int = 1024) -> Iterator[torch.Tensor]:
    """Batches of ``split`` as float32 tensors ``(n, *shape)`` through pyarrow alone (no Ray)."""
    import pyarrow.dataset as pads

    if split not in info.splits:
        raise DataError(f"{info.uri}: no {split!r} split (found {sorted(info.splits)})")
    dataset = pads.dataset(info.splits[split], filesystem=info.filesystem, format="parquet")
    for batch in dataset.to_batches(columns=info.columns(), batch_size=batch_size):
        if batch.num_rows:
            x = arrow_to_numpy(batch, info.features, info.data_dim)
            yield _tensor(x).reshape(-1, *info.shape)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor of ``array``; read-only views of Arrow buffers are copied (torch would warn
    that writing to them is undefined, and the caller owns what it gets)."""
    return torch.from_numpy(array if array.flags.writeable else array.copy())


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
    x = _tensor(arrow_to_numpy(table, info.features, info.data_dim)).reshape(-1, *info.shape)
    if labels:
        y = (
            torch.from_numpy(np.asarray(table.column("label").to_numpy(), dtype=np.int64))
            if info.has_label
            else None
        )
        return x, y
    return x



"""``rfdist data validate``: is a dataset usable? One clear line per problem, or a summary.

Checks: layout (manifest or plain ``split/*.parquet``; no interrupted make), a non-empty
``train`` split and no empty split, every shard readable (truncated files), column ``x`` (or the
named feature columns) present with the right type, one vector length across all shards and
rows, shape metadata consistent with it, ``label`` integral, and no NaN/inf values or values too
large for float32 arithmetic (the first bad row of each shard is named).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rfdist.data.errors import DataError, StorageUnreachable, arrow_reason
from rfdist.data.parquet import SHAPE_KEY, list_layout
from rfdist.data.reader import is_tensor_type, x_layout

__all__ = [
    "SAMPLE_ROWS",
    "SAMPLE_TOTAL_ROWS",
    "ValidationReport",
    "sample_problem",
    "unreadable_reason",
    "validate_dataset",
]

SAMPLE_ROWS = 10_000
"""Rows at the start of each shard whose values ``train``'s preflight reads (nulls, NaN/inf,
huge values, label type); ``data validate`` reads every row."""

SAMPLE_TOTAL_ROWS = 200_000
"""At most this many rows in all, per preflight: shards beyond it are checked by footer only
(a run's first non-finite step then names the data, :mod:`rfdist.runtime.worker`)."""


@dataclass
class ValidationReport:
    """Problems found (empty = usable) and a summary of what was read."""

    uri: str
    problems: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    data_dim: int | None = None
    shape: tuple[int, ...] | None = None
    bytes: int = 0
    unreachable: bool = False  # the storage could not be reached (a runtime failure, not bad data)
    value_type: str | None = None  # of the first usable shard's x (or features): shards must agree

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "rows": self.rows,
            "D": self.data_dim,
            "shape": self.shape,
            "bytes": self.bytes,
        }


def _name(path: str) -> str:
    return "/".join(path.rsplit("/", 2)[-2:])


FLOAT32_SQUARE_LIMIT = 1.8e19
"""|x| above this overflows float32 when squared (sqrt of float32's max ≈ 1.84e19): training
on such values gives a non-finite loss at once."""


def _first_bad_row(values: np.ndarray, row_len: int) -> tuple[int, str] | None:
    """The first row holding NaN/inf or a value too large for float32 arithmetic, and what."""
    bad = ~np.isfinite(values)
    if bad.any():
        return int(np.argmax(bad) // row_len), "NaN or inf"
    huge = np.abs(values) > FLOAT32_SQUARE_LIMIT
    if huge.any():
        index = int(np.argmax(huge))
        return index // row_len, (
            f"value {values[index]:.3g} is too large (|x| > {FLOAT32_SQUARE_LIMIT:.2g} overflows "
            "float32 when squared)"
        )
    return None


def _first_null_row(column: pa.Array) -> int | None:
    """The first row that is null or holds a null value (nested one level), else ``None``."""
    if column.null_count:
        return int(np.argmax(column.is_null().to_numpy(zero_copy_only=False)))
    storage = column.storage if isinstance(column, pa.ExtensionArray) else column
    if pa.types.is_fixed_size_list(storage.type):
        values = storage.flatten()
        if values.null_count:
            index = int(np.argmax(values.is_null().to_numpy(zero_copy_only=False)))
            return index // storage.type.list_size
    return None


def _check_nulls(report: ValidationReport, table: pa.Table, names: list[str], where: str) -> bool:
    """One problem per column holding a null (row named); ``True`` when none does."""
    clean = True
    for name in names:
        if name not in table.column_names:
            continue
        row = _first_null_row(table.column(name).combine_chunks())
        if row is not None:
            report.problems.append(
                f"{where}: column {name!r} row {row} is null (no value); drop or fill null rows"
            )
            clean = False
    return clean


def _check_vectors(
    report: ValidationReport, table: pa.Table, column: pa.Array, where: str, manifest_shape: Any = None
) -> int:
    """Checks of a fixed_size_list<float> column ``x``: finite values, ``rfdist.shape`` metadata
    and the manifest's ``shape``."""
    dim = column.type.list_size
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = _first_bad_row(values, dim)
    if bad is not None:
        report.problems.append(f"{where}: column 'x' row {bad[0]}: {bad[1]}")
    meta = (table.schema.metadata or {}).get(SHAPE_KEY)
    if meta:
        try:
            shape = tuple(int(s) for s in meta.decode().split(","))
        except ValueError:
            report.problems.append(f"{where}: metadata rfdist.shape={meta!r} is not a shape like 1,28,28")
            return dim
        if math.prod(shape) != dim:
            report.problems.append(
                f"{where}: metadata rfdist.shape={shape} does not match vector length {dim}"
            )
        report.shape = report.shape or shape
    stored = _meta_shape(meta) or (dim,)
    if manifest_shape is not None and tuple(manifest_shape) != stored:
        report.problems.append(
            f"{where}: column 'x' holds rows of shape {stored}, the manifest says {tuple(manifest_shape)}"
        )
    return dim


def _meta_shape(meta: bytes | None) -> tuple[int, ...] | None:
    try:
        return tuple(int(s) for s in meta.decode().split(",")) if meta else None
    except ValueError:
        return None


def _check_features(report: ValidationReport, table: pa.Table, features: list[str], where: str) -> int | None:
    """Check named numeric feature columns; their count is ``D`` (``None``: a column is missing)."""
    missing = [f for f in features if f not in table.column_names]
    if missing:
        report.problems.append(f"{where}: column {missing[0]!r} not found; columns are {table.column_names}")
        return None
    for name in features:
        column = table.column(name)
        if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
            report.problems.append(f"{where}: column {name!r} has type {column.type}, expected a number")
            continue
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = _first_bad_row(values, 1)
        if bad is not None:
            report.problems.append(f"{where}: column {name!r} row {bad[0]}: {bad[1]}")
    return len(features)


def _check_tensor_x(
    report: ValidationReport, table: pa.Table, column: pa.Array, where: str, manifest_shape: Any
) -> int | None:
    """Check an image column ``x`` of fixed-shape tensors against the manifest and other shards."""
    try:
        dim, shape, _, _ = x_layout(table.schema, where)
    except DataError as exc:
        report.problems.append(str(exc))
        return None
    if manifest_shape is not None and tuple(manifest_shape) != shape:
        report.problems.append(
            f"{where}: column 'x' holds tensors of shape {shape}, the manifest says {tuple(manifest_shape)}"
        )
    elif report.shape is not None and report.shape != shape:
        report.problems.append(
            f"{where}: column 'x' holds tensors of shape {shape}, other shards {report.shape}"
        )
    report.shape = report.shape or shape
    if pa.types.is_floating(column.type.value_type):
        values = np.asarray(column.storage.flatten().to_numpy(zero_copy_only=False))
        bad = _first_bad_row(values, dim)
        if bad is not None:
            report.problems.append(f"{where}: column 'x' row {bad[0]}: {bad[1]}")
    return dim


def _check_x(report: ValidationReport, table: pa.Table, where: str, manifest_shape: Any) -> int | None:
    """Check column ``x`` (vectors or image tensors); its ``D``, or ``None`` when unusable."""
    if "x" not in table.column_names:
        report.problems.append(
            f"{where}: no column 'x' (columns are {table.column_names}); name numeric feature columns with --features"
        )
        return None
    column = table.column("x").combine_chunks()
    if is_tensor_type(column.type):
        return _check_tensor_x(report, table, column, where, manifest_shape)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.argmax(lengths != lengths[0]))
            report.problems.append(
                f"{where}: column 'x' has mixed vector lengths (row 0: {lengths[0]}, "
                f"row {row}: {lengths[row]}); expected fixed_size_list<float32>[D]"
            )
        else:
            report.problems.append(
                f"{where}: column 'x' has type {column.type}, expected fixed_size_list<float32>[D]"
            )
        return None
    if not pa.types.is_fixed_size_list(column.type) or not pa.types.is_floating(column.type.value_type):
        report.problems.append(
            f"{where}: column 'x' has type {column.type}, expected fixed_size_list<float32>[D] "
            "or arrow.fixed_shape_tensor<uint8>[C,H,W]"
        )
        return None
    return _check_vectors(report, table, column, where, manifest_shape)


def _check_shard(
    report: ValidationReport, table: pa.Table, where: str, features: list[str] | None, manifest_shape: Any
) -> int | None:
    """Check one readable shard's columns; its ``D``, or ``None`` when its data is unusable."""
    if not _check_nulls(report, table, [*(features or ["x"]), "label"], where):
        return None
    if features:
        dim = _check_features(report, table, features, where)
    else:
        dim = _check_x(report, table, where, manifest_shape)
    if dim is None:
        return None
    if "label" in table.column_names and not pa.types.is_integer(table.column("label").type):
        report.problems.append(
            f"{where}: column 'label' has type {table.column('label').type}, expected int64"
        )
    return dim


def validate_dataset(
    uri: str, *, features: list[str] | None = None, storage_options: dict[str, Any] | None = None
) -> ValidationReport:
    """Check the dataset at ``uri``; never raises for data problems (they go in the report)."""
    report = ValidationReport(uri)
    try:
        layout = list_layout(uri, storage_options)
    except DataError as exc:
        report.problems.append(str(exc))
        report.unreachable = isinstance(exc, StorageUnreachable)
        return report
    fs = layout.filesystem
    manifest_splits = (layout.manifest or {}).get("splits", {})
    if "train" not in layout.files:
        report.problems.append(f"{uri}: no 'train' split (found {sorted(layout.files)})")
    expected_dim: int | None = None
    unreadable: set[str] = set()
    for split, paths in sorted(layout.files.items()):
        report.rows[split] = 0
        for path in paths:
            where = f"{uri}: {_name(path)}"
            try:
                report.bytes += fs.get_file_info(path).size or 0
                table = pq.read_table(path, filesystem=fs)
            except (pa.ArrowInvalid, OSError) as exc:
                report.problems.append(f"{where}: {unreadable_reason(fs, path, exc)}")
                unreadable.add(split)
                continue
            report.rows[split] += table.num_rows
            dim = _check_shard(
                report, table, where, features, (manifest_splits.get(split) or {}).get("shape")
            )
            if dim is None:
                continue
            _check_value_type(report, table, features, where)
            if expected_dim is None:
                expected_dim = dim
            elif dim != expected_dim:
                report.problems.append(
                    f"{where}: vector length {dim} differs from {expected_dim} in other shards"
                )
        if report.rows[split] == 0 and split not in unreadable:  # unreadable ≠ empty
            report.problems.append(f"{uri}: split {split!r} is empty")
    _check_manifest_rows(report, layout.manifest)
    report.data_dim = expected_dim
    if report.shape is None and expected_dim is not None:
        report.shape = (expected_dim,)
    return report


def _value_type(table: pa.Table, features: list[str] | None) -> str:
    """The stored value type(s) of ``x`` or of the feature columns, as ``train`` compares them."""
    if features:
        return ",".join(str(table.schema.field(f).type) for f in features)
    return str(table.schema.field("x").type.value_type)


def _check_value_type(
    report: ValidationReport, table: pa.Table, features: list[str] | None, where: str
) -> None:
    """Every shard stores the same value type (``train`` refuses float32 beside float64 shards)."""
    got = _value_type(table, features)
    if report.value_type is None:
        report.value_type = got
    elif got != report.value_type:
        report.problems.append(
            f"{where}: column 'x' stores {got} values, other shards {report.value_type}; "
            "write every shard with one type (float32)"
        )


def unreadable_reason(filesystem: Any, path: str, exc: Exception) -> str:
    """Why a shard's values cannot be read: nulls in a fixed-size list column, named with the
    row group (from the Parquet statistics), else Arrow's own reason.

    pyarrow refuses to read a null row of a ``fixed_size_list`` column ("Expected all lists to be
    of size=D …"): that is a null in the data, not a damaged file.
    """
    if "Expected all lists to be of size" in str(exc):
        with contextlib.suppress(Exception):
            meta = pq.ParquetFile(path, filesystem=filesystem).metadata
            for group in range(meta.num_row_groups):
                for index in range(meta.num_columns):
                    chunk = meta.row_group(group).column(index)
                    stats = chunk.statistics
                    if stats is not None and stats.has_null_count and stats.null_count:
                        column = chunk.path_in_schema.split(".")[0]
                        return (
                            f"column {column!r} holds null rows ({stats.null_count} null values in row "
                            f"group {group}); drop or fill null rows"
                        )
        return "column 'x' holds null rows (a fixed-size list with missing values); drop or fill them"
    return f"not a readable Parquet file ({arrow_reason(exc)})"


def sample_problem(
    filesystem: Any, path: str, where: str, features: list[str] | None, rows: int = SAMPLE_ROWS
) -> str | None:
    """The first problem in the values of the first ``rows`` rows of one shard, else ``None``.

    The same checks as ``data validate`` (nulls, NaN/inf, values too large, label type) on a
    bounded read, for ``train``'s preflight.
    """
    handle = pq.ParquetFile(path, filesystem=filesystem)
    schema = handle.schema_arrow
    columns = [c for c in [*(features or ["x"]), "label"] if c in schema.names]  # only what trains
    schema = pa.schema([schema.field(c) for c in columns], metadata=schema.metadata)
    batches = []
    taken = 0
    for batch in handle.iter_batches(batch_size=max(1, min(rows, 65_536)), columns=columns):
        batches.append(batch.slice(0, rows - taken))
        taken += batches[-1].num_rows
        if taken >= rows:
            break
    table = pa.Table.from_batches(batches, schema=schema)
    report = ValidationReport(where)
    _check_shard(report, table, where, features, None)
    return report.problems[0] if report.problems else None


def _check_manifest_rows(report: ValidationReport, manifest: dict[str, Any] | None) -> None:
    """Each split's row count against the manifest's."""
    if manifest is None:
        return
    for split, entry in manifest["splits"].items():
        if split in report.rows and report.rows[split] != entry["rows"]:
            report.problems.append(
                f"{report.uri}: split {split!r} has {report.rows[split]} rows, the manifest says {entry['rows']}"
            )

"""Import a user's own table (Parquet file or folder, CSV) into rfdist's dataset layout.

``rfdist data import TABLE --out DIR`` streams the table through a pyarrow dataset a batch at a
time (input larger than memory is fine), assembles the numeric feature columns into ``x``
(float32 vectors), keeps an integer ``label`` column and an ``id`` column when there is one,
splits the rows into ``train``/``val``/``test`` with seeded exact fractions (only one byte per
row is held: the split of each row) and writes the shards and manifest with
:class:`rfdist.data.parquet.DatasetWriter` (nothing is left behind on failure). The manifest
records the source, the feature names and the training split's per-feature mean/std
(``data.preprocess=standardize``).

Example:
    >>> import tempfile, pyarrow as pa, pyarrow.parquet as pq
    >>> folder = tempfile.mkdtemp()
    >>> pq.write_table(pa.table({"a": [0.0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "b": [1.0] * 10}), f"{folder}/t.parquet")
    >>> manifest = import_table(f"{folder}/t.parquet", f"{folder}/ds", val_frac=0.2, test_frac=0.1)
    >>> manifest["features"], {s: e["rows"] for s, e in manifest["splits"].items()}
    (['a', 'b'], {'train': 7, 'val': 2, 'test': 1})
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from rfdist.data.errors import DataError
from rfdist.data.fs import resolve
from rfdist.data.parquet import DatasetWriter, vectors_table

__all__ = ["FORMATS", "import_table"]

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}
"""File suffixes read, and their format (CSV compression follows the suffix)."""

BATCH_ROWS = 65_536


def _format(path: str) -> str | None:
    lowered = path.lower()
    return next((fmt for suffix, fmt in FORMATS.items() if lowered.endswith(suffix)), None)


def open_table(uri: str, storage_options: dict[str, Any] | None = None) -> pads.Dataset:
    """A pyarrow dataset of the file ``uri``, or of the ``.parquet``/``.csv`` files in the folder ``uri``."""
    fs, path = resolve(uri, storage_options)
    try:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: no such file or folder")
        if info.type == pafs.FileType.File:
            files = [path]
        else:
            files = sorted(
                f.path
                for f in fs.get_file_info(pafs.FileSelector(path))
                if f.type == pafs.FileType.File and _format(f.path) and not f.base_name.startswith(("_", "."))
            )
            if not files:
                raise DataError(f"{uri}: no {'/'.join(FORMATS)} files in this folder")
        formats = {_format(f) for f in files}
        if None in formats:
            raise DataError(f"{uri}: unknown table format; expected a file ending in {', '.join(FORMATS)}")
        if len(formats) > 1:
            raise DataError(f"{uri}: the folder mixes Parquet and CSV files; import one kind at a time")
        return pads.dataset(files, filesystem=fs, format=formats.pop())
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{uri}: cannot read the table: {str(exc).splitlines()[0][:200]}") from None


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def choose_columns(
    schema: pa.Schema, uri: str, features: list[str] | None, label: str | None
) -> tuple[list[str], list[str]]:
    """``(features, pass_through)``: the named feature columns (checked), else every numeric column
    but the label and ``id``; ``id`` is passed through when it is not a feature."""
    names = schema.names
    if label is not None:
        if label not in names:
            raise DataError(f"{uri}: --label column {label!r} not found; columns are {names}")
        if not pa.types.is_integer(schema.field(label).type):
            raise DataError(
                f"{uri}: --label column {label!r} has type {schema.field(label).type}, expected integers"
            )
    if features:
        for name in features:
            if name not in names:
                raise DataError(f"{uri}: --features column {name!r} not found; columns are {names}")
            if not _is_numeric(schema.field(name).type):
                raise DataError(
                    f"{uri}: --features column {name!r} has type {schema.field(name).type}, expected a number"
                )
        if label in features:
            raise DataError(f"{uri}: column {label!r} is both the label and a feature")
    else:
        features = [n for n in names if n not in (label, "id") and _is_numeric(schema.field(n).type)]
        if not features:
            raise DataError(f"{uri}: no numeric columns to use as features; columns are {names}")
    return list(features), ["id"] if "id" in names and "id" not in features and label != "id" else []


def split_sizes(rows: int, val_frac: float, test_frac: float) -> tuple[int, int, int]:
    """``(train, val, test)`` row counts: rounded fractions, at least one row in each asked-for split."""
    if not 0 < val_frac < 1:
        raise DataError(f"--val-frac must be > 0 and < 1 (got {val_frac}); training needs a val split")
    if not 0 <= test_frac < 1:
        raise DataError(f"--test-frac must be >= 0 and < 1 (got {test_frac})")
    if val_frac + test_frac >= 1:
        raise DataError(f"--val-frac + --test-frac must be < 1 (got {val_frac + test_frac:g})")
    n_val = max(1, round(rows * val_frac))
    n_test = max(1, round(rows * test_frac)) if test_frac > 0 else 0
    if rows - n_val - n_test < 1:
        raise DataError(f"{rows} rows are too few for val/test fractions {val_frac:g}/{test_frac:g}")
    return rows - n_val - n_test, n_val, n_test


def _rows(batch: pa.RecordBatch, features: list[str], uri: str, offset: int) -> np.ndarray:
    """The batch's feature columns as float32 rows; refuses nulls and non-finite values."""
    columns = []
    for name in features:
        column = batch.column(name)
        if column.null_count:
            raise DataError(f"{uri}: column {name!r} has an empty value near row {offset}")
        values = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float32)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise DataError(
                f"{uri}: column {name!r} has a non-finite value (NaN/inf) in row {offset + bad[0]}"
            )
        columns.append(values)
    return np.column_stack(columns)


def import_table(
    source: str,
    out: str,
    *,
    features: list[str] | None = None,
    label: str | None = None,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    shard_rows: int = 50_000,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the table ``source`` as an rfdist dataset at ``out``; returns the manifest."""
    dataset = open_table(source, storage_options)
    features, passed = choose_columns(dataset.schema, source, features, label)
    try:
        sizes = split_sizes(dataset.count_rows(), val_frac, test_frac)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{source}: cannot read the table: {str(exc).splitlines()[0][:200]}") from None
    assignment = np.repeat(np.arange(3, dtype=np.int8), sizes)
    np.random.default_rng(seed).shuffle(assignment)
    names = ("train", "val", "test")
    dim = len(features)
    total, squares = np.zeros(dim), np.zeros(dim)
    columns = [*features, *([label] if label else []), *passed]
    offset = 0
    with DatasetWriter(out, shard_rows=shard_rows, storage_options=storage_options) as writer:
        try:
            for batch in dataset.to_batches(columns=columns, batch_size=BATCH_ROWS):
                x = _rows(batch, features, source, offset)
                if label and batch.column(label).null_count:
                    raise DataError(
                        f"{source}: --label column {label!r} has an empty value near row {offset}"
                    )
                where = assignment[offset : offset + batch.num_rows]
                offset += batch.num_rows
                for code, split in enumerate(names):
                    index = np.flatnonzero(where == code)
                    if not index.size:
                        continue
                    labels = batch.column(label).take(index).to_numpy(zero_copy_only=False) if label else None
                    table = vectors_table(x[index], labels, shape=(dim,))
                    for name in passed:
                        table = table.append_column(name, batch.column(name).take(index))
                    writer.write(split, table)
                    if split == "train":
                        part = x[index].astype(np.float64)
                        total += part.sum(0)
                        squares += (part * part).sum(0)
        except (pa.ArrowInvalid, OSError) as exc:  # e.g. a CSV value that does not parse
            raise DataError(f"{source}: cannot read the table: {str(exc).splitlines()[0][:200]}") from None
        mean = total / sizes[0]
        std = np.sqrt(np.maximum(squares / sizes[0] - mean * mean, 0.0))
        entry = {"data_dim": dim, "shape": [dim], "has_label": label is not None, "dtype": "float32",
                 "columns": passed}  # fmt: skip
        extra = {
            "name": "import",
            "source": source,
            "features": features,
            "label": label,
            "seed": seed,
            "fractions": {"val": val_frac, "test": test_frac},
            "stats": {"mean": mean.tolist(), "std": np.maximum(std, 1e-6).tolist()},
        }
        return writer.finish({split: entry for split in names}, extra)

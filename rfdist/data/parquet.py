"""The Parquet dataset layout, and an atomic writer for it.

Layout::

    URI/_MANIFEST.json            written last: the dataset is complete iff it exists
    URI/train/part-<ver>-00000.parquet, …   column ``x``: images as uint8
    URI/val/…   URI/test/…                  ``arrow.fixed_shape_tensor`` (shape in the type);
                                            vectors as fixed_size_list<float32>[D] (older image
                                            datasets: that, plus the schema metadata key
                                            ``rfdist.shape`` = "1,28,28"); optional ``label``
                                            int64; other columns (factors, ids) pass through

Atomicity without renames (S3 has none): ``make`` first writes ``_IN_PROGRESS`` (unless a
previous manifest exists), then shards whose names carry a fresh version id, then the
manifest listing exactly those files (one PUT on S3; tmp + rename locally), then removes
the marker and the previous version's files. Readers use the manifest's file list, so a
re-run never mixes old and new shards, and an interrupted first ``make`` leaves
``_IN_PROGRESS`` behind, which readers and ``validate`` refuse. A folder without either
file is read as a user's own plain layout (``split/*.parquet``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rfdist.data.errors import DataError, StorageUnreachable
from rfdist.data.fs import describe_s3_error, is_unreachable, join, resolve

__all__ = [
    "IN_PROGRESS",
    "MANIFEST",
    "SHAPE_KEY",
    "SPLITS",
    "DatasetWriter",
    "Layout",
    "image_shape",
    "list_layout",
    "vectors_table",
    "write_dataset",
]

MANIFEST = "_MANIFEST.json"
IN_PROGRESS = "_IN_PROGRESS"
SHAPE_KEY = b"rfdist.shape"
SPLITS = ("train", "val", "test")


def image_shape(x: np.ndarray, shape: tuple[int, ...] | None = None) -> tuple[int, ...] | None:
    """The ``(C, H, W)`` pixel shape when rows ``x`` are uint8 images, else ``None``.

    uint8 rows ``(N, C, H, W)`` / ``(N, H, W)`` are images; so are uint8 rows of any layout when
    ``shape`` names three dimensions of the same size.
    """
    if x.dtype != np.uint8:
        return None
    row = math.prod(x.shape[1:])
    if shape is not None and len(shape) == 3:
        if math.prod(shape) != row:
            raise DataError(f"x: uint8 rows of {row} values cannot have image shape {tuple(shape)}")
        return tuple(int(s) for s in shape)
    if x.ndim == 4:
        return tuple(int(s) for s in x.shape[1:])
    if x.ndim == 3:
        return (1, *(int(s) for s in x.shape[1:]))
    return None


def _extra_column(name: str, values: Any) -> pa.Array:
    values = np.ascontiguousarray(values)
    if values.ndim == 1:
        return pa.array(values)
    if values.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    raise DataError(f"columns[{name!r}]: expected a 1-D or 2-D array per split, got shape {values.shape}")


def vectors_table(
    x: np.ndarray,
    label: np.ndarray | None = None,
    shape: tuple[int, ...] | None = None,
    columns: Mapping[str, Any] | None = None,
) -> pa.Table:
    """An Arrow table in rfdist's schema from rows ``x`` and optional labels / extra columns.

    uint8 images ``(N, C, H, W)`` (or ``(N, H, W)``) become an ``arrow.fixed_shape_tensor``
    column of uint8 (the shape lives in the type); anything else becomes
    ``fixed_size_list<float32>[D]`` with the row shape in the ``rfdist.shape`` metadata.
    """
    x = np.asarray(x)
    rows = x.shape[0]
    pixels = image_shape(x, shape)
    if pixels is not None:
        # built from the flat buffer: ``from_numpy_ndarray`` reads a permutation from strides,
        # which are arbitrary for size-1 axes (an (N, 1, H, W) view would come back (H, W, 1))
        storage = pa.FixedSizeListArray.from_arrays(
            pa.array(x.reshape(-1), type=pa.uint8()), math.prod(pixels)
        )
        arrays: dict[str, Any] = {
            "x": pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.uint8(), pixels), storage)
        }
    else:
        flat = np.asarray(x, dtype=np.float32).reshape(rows, -1)
        dim = flat.shape[1]
        arrays = {"x": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), type=pa.float32()), dim)}
    if label is not None:
        arrays["label"] = pa.array(np.asarray(label, dtype=np.int64))
    for name, values in (columns or {}).items():
        if name in ("x", "label"):
            raise DataError(f"columns[{name!r}]: the name is reserved (x, label)")
        if len(values) != rows:
            raise DataError(f"columns[{name!r}]: {len(values)} values for {rows} rows")
        arrays[name] = _extra_column(name, values)
    table = pa.table(arrays)
    if pixels is not None:
        return table
    shape = tuple(shape) if shape is not None else (tuple(x.shape[1:]) if x.ndim > 2 else (dim,))
    return table.replace_schema_metadata({SHAPE_KEY: ",".join(str(s) for s in shape).encode()})


def _write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    else:  # object stores: a single PUT is atomic
        with fs.open_output_stream(path) as out:
            out.write(data)


def _storage_error(uri: str, exc: OSError, action: str) -> DataError:
    """A one-line DataError for a storage failure (S3 failures classified)."""
    if uri.startswith("s3://"):
        return (StorageUnreachable if is_unreachable(exc) else DataError)(describe_s3_error(uri, exc))
    return DataError(f"{uri}: cannot {action}: {exc}")


def _exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def write_dataset(
    uri: str,
    splits: Mapping[str, Mapping[str, Any]],
    *,
    shape: tuple[int, ...] | None = None,
    shard_rows: int = 50_000,
    storage_options: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``{split: {"x": array, "label": array | None, "columns": {...}}}`` to ``uri`` atomically.

    uint8 images ``(N, C, H, W)`` / ``(N, H, W)`` are stored as uint8 tensors, other rows as
    float32 vectors (:func:`vectors_table`); ``columns`` are extra per-row numeric arrays (1-D,
    or 2-D stored as fixed-size lists) passed through. Returns the manifest; ``extra`` (e.g.
    feature statistics) is stored in it.

    Example:
        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> manifest = write_dataset(out, {"train": {"x": np.zeros((5, 3))}})
        >>> manifest["splits"]["train"]["rows"]
        5
    """
    if shard_rows < 1:
        raise DataError(f"--shard-rows must be >= 1 (got {shard_rows})")
    fs, root = resolve(uri, storage_options)
    version = uuid.uuid4().hex[:12]
    try:
        fs.create_dir(root, recursive=True)
        previous = _read_manifest(fs, root, uri) if _exists(fs, join(root, MANIFEST)) else None
        if previous is None:
            _write_bytes_atomic(fs, join(root, IN_PROGRESS), version.encode())
        manifest: dict[str, Any] = {"format": "rfdist-parquet-v1", "version": version, "splits": {}}
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(s["x"]) for s in splits.values()), desc="write", unit="row")
        for split, content in splits.items():
            manifest["splits"][split] = _write_split(
                fs, root, split, content, shape, shard_rows, version, bar
            )
        if bar is not None:
            bar.close()
        if extra:
            manifest.update(extra)
        _write_bytes_atomic(fs, join(root, MANIFEST), json.dumps(manifest, indent=1).encode())
        if _exists(fs, join(root, IN_PROGRESS)):
            fs.delete_file(join(root, IN_PROGRESS))
        if previous is not None:  # drop the superseded version's shards (best effort)
            for entry in previous["splits"].values():
                _delete_quietly(fs, root, entry["files"])
    except OSError as exc:
        raise _storage_error(uri, exc, "write the dataset") from None
    return manifest


def _write_split(
    fs: pafs.FileSystem,
    root: str,
    split: str,
    content: Mapping[str, Any],
    shape: tuple[int, ...] | None,
    shard_rows: int,
    version: str,
    bar: Any,
) -> dict[str, Any]:
    """Write one split's shards of ``shard_rows`` rows (named by ``version``); its manifest entry."""
    x = np.asarray(content["x"])
    label = content.get("label")
    columns = content.get("columns") or {}
    pixels = image_shape(x, shape)
    split_shape = pixels or shape or (tuple(x.shape[1:]) if x.ndim > 2 else (int(np.prod(x.shape[1:])),))
    fs.create_dir(join(root, split), recursive=True)
    files = []
    for index, start in enumerate(range(0, max(len(x), 1), shard_rows)):
        stop = min(start + shard_rows, len(x))
        table = vectors_table(
            x[start:stop],
            None if label is None else label[start:stop],
            split_shape,
            {name: values[start:stop] for name, values in columns.items()},
        )
        name = f"{split}/part-{version}-{index:05d}.parquet"
        pq.write_table(table, join(root, name), filesystem=fs)
        files.append(name)
        if bar is not None:
            bar.update(stop - start)
    return {
        "rows": len(x),
        "files": files,
        "data_dim": int(np.prod(split_shape)),
        "shape": list(split_shape),
        "has_label": label is not None,
        "dtype": "uint8" if pixels is not None else "float32",
        "columns": sorted(columns),
    }


def _delete_quietly(fs: pafs.FileSystem, root: str, names: list[str]) -> None:
    """Delete files under ``root``, ignoring the ones that cannot be (best effort)."""
    for name in names:
        with contextlib.suppress(OSError):
            fs.delete_file(join(root, name))


def _read_manifest(fs: pafs.FileSystem, root: str, uri: str) -> dict[str, Any]:
    with fs.open_input_stream(join(root, MANIFEST)) as handle:
        try:
            manifest = json.loads(handle.read())
        except json.JSONDecodeError:
            raise DataError(f"{uri}/{MANIFEST}: not valid JSON") from None
    if manifest.get("format") != "rfdist-parquet-v1" or not isinstance(manifest.get("splits"), dict):
        raise DataError(f"{uri}/{MANIFEST}: not an rfdist dataset manifest")
    for split, entry in manifest["splits"].items():
        _check_manifest_entry(f"{uri}/{MANIFEST}: splits.{split}", entry)
    return manifest


def _check_manifest_entry(where: str, entry: Any) -> None:
    """A split's manifest entry: a non-empty ``files`` list of names, a whole ``rows`` count."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected a mapping with files and rows, got {entry!r}")
    files = entry.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise DataError(f"{where}.files: expected a list of shard file names, got {files!r}")
    if not files:
        raise DataError(f"{where}.files: lists no shard (every split has at least one)")
    rows = entry.get("rows")
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
        raise DataError(f"{where}.rows: expected a whole number of rows >= 0, got {rows!r}")
    shape = entry.get("shape")
    if shape is not None and (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
    ):
        raise DataError(
            f"{where}.shape: expected a list of positive sizes like [2] or [1, 28, 28], got {shape!r}"
        )


def _refuse_dangling(fs: pafs.FileSystem, folder: str, shards: list[str], uri: str) -> None:
    """A local ``*.parquet`` entry the listing skipped (a symlink loop, a dangling link): say why.

    pyarrow's listing leaves such entries out silently, so the shard would just be missing.
    """
    import os

    if not isinstance(fs, pafs.LocalFileSystem):
        return
    for name in sorted(os.listdir(folder)):
        path = join(folder, name)
        if name.endswith(".parquet") and path not in shards:
            try:
                os.stat(path)
            except OSError as exc:
                split = folder.rstrip("/").rsplit("/", 1)[-1]
                raise DataError(
                    f"{uri}: {split}/{name}: not a readable Parquet file ({exc.strerror})"
                ) from None


def confined(fs: pafs.FileSystem, root: str, entry: Any, manifest: str) -> str:
    """``root/entry`` for a manifest's file entry, refused unless it stays inside the dataset.

    A manifest is data: an entry such as ``../../etc/passwd`` or ``../other/train/x.parquet``
    must not make rfdist read a file outside the dataset folder (on a local disk a symlink that
    leads out is refused too).
    """
    parts = str(entry).replace("\\", "/").split("/")
    if not isinstance(entry, str) or not entry or entry.startswith("/") or ".." in parts or "" in parts:
        raise DataError(
            f"{manifest}: file entry {entry!r} leaves the dataset folder "
            "(expected a relative path inside it, e.g. train/part-00000.parquet)"
        )
    path = join(root, entry)
    if isinstance(fs, pafs.LocalFileSystem):
        real, base = os.path.realpath(path), os.path.realpath(root)
        if os.path.commonpath([real, base]) != base:
            raise DataError(
                f"{manifest}: file entry {entry!r} is a link that leads out of the dataset folder"
            )
    return path


@dataclass
class Layout:
    """Where a dataset's shards are: ``files[split]`` are paths on ``filesystem``."""

    uri: str
    filesystem: pafs.FileSystem
    root: str
    files: dict[str, list[str]]
    manifest: dict[str, Any] | None


def list_layout(uri: str, storage_options: dict[str, Any] | None = None) -> Layout:
    """Find the shards of every split (manifest first, else the plain ``split/*.parquet`` layout)."""
    fs, root = resolve(uri, storage_options)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.NotFound:
            raise DataError(f"{uri}: dataset not found (no such folder or prefix)")
        if _exists(fs, join(root, MANIFEST)):
            manifest = _read_manifest(fs, root, uri)
            files = {
                s: [confined(fs, root, f, f"{uri}/{MANIFEST}") for f in e["files"]]
                for s, e in manifest["splits"].items()
            }
            return Layout(uri, fs, root, files, manifest)
        if _exists(fs, join(root, IN_PROGRESS)):
            raise DataError(
                f"{uri}: incomplete dataset ({IN_PROGRESS} present: an interrupted `rfdist data make`); "
                "re-run the make"
            )
        files = {}
        for entry in fs.get_file_info(pafs.FileSelector(root)):
            if entry.type == pafs.FileType.Directory:
                shards = sorted(
                    f.path
                    for f in fs.get_file_info(pafs.FileSelector(entry.path))
                    if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                )
                _refuse_dangling(fs, entry.path, shards, uri)
                if shards:
                    files[entry.base_name] = shards
        if not files:
            raise DataError(f"{uri}: no Parquet shards found (expected {uri}/train/*.parquet)")
        return Layout(uri, fs, root, files, None)
    except OSError as exc:
        raise _storage_error(uri, exc, "read") from None


class DatasetWriter:
    """Write a dataset a batch at a time (input larger than memory), with :func:`write_dataset`'s
    protocol: versioned shards, the manifest last; on an exception nothing of this version stays.

    Used as a context manager: ``write(split, table)`` appends rows (a table in rfdist's schema:
    :func:`vectors_table`, plus pass-through columns), ``finish(extra)`` writes the manifest.
    Leaving the block without ``finish`` (an error) deletes the shards written so far and, when
    there was no previous dataset, the ``_IN_PROGRESS`` marker.
    """

    def __init__(self, uri: str, *, shard_rows: int = 50_000, storage_options: dict[str, Any] | None = None):
        if shard_rows < 1:
            raise DataError(f"--shard-rows must be >= 1 (got {shard_rows})")
        self.uri, self.shard_rows = uri, shard_rows
        self.fs, self.root = resolve(uri, storage_options)
        self.version = uuid.uuid4().hex[:12]
        self.previous: dict[str, Any] | None = None
        self.created_root = False
        self.pending: dict[str, list[pa.Table]] = {}
        self.splits: dict[str, dict[str, Any]] = {}
        self.finished = False

    def __enter__(self) -> DatasetWriter:
        try:
            self.created_root = not _exists(self.fs, self.root)
            self.fs.create_dir(self.root, recursive=True)
            if _exists(self.fs, join(self.root, MANIFEST)):
                self.previous = _read_manifest(self.fs, self.root, self.uri)
            else:
                _write_bytes_atomic(self.fs, join(self.root, IN_PROGRESS), self.version.encode())
        except OSError as exc:
            raise _storage_error(self.uri, exc, "write the dataset") from None
        return self

    def write(self, split: str, table: pa.Table) -> None:
        """Append ``table``'s rows to ``split`` (a shard is written every ``shard_rows`` rows)."""
        entry = self.splits.setdefault(split, {"rows": 0, "files": []})
        entry["rows"] += table.num_rows
        self.pending.setdefault(split, []).append(table)
        if sum(t.num_rows for t in self.pending[split]) >= self.shard_rows:
            self._flush(split, final=False)

    def _flush(self, split: str, *, final: bool) -> None:
        tables = self.pending.pop(split, [])
        if not tables:
            return
        table = pa.concat_tables(tables)
        entry = self.splits[split]
        try:
            self.fs.create_dir(join(self.root, split), recursive=True)
            start = 0
            while table.num_rows - start >= self.shard_rows or (final and start < table.num_rows):
                name = f"{split}/part-{self.version}-{len(entry['files']):05d}.parquet"
                entry["files"].append(name)
                pq.write_table(table.slice(start, self.shard_rows), join(self.root, name), filesystem=self.fs)
                start += self.shard_rows
        except OSError as exc:
            raise _storage_error(self.uri, exc, "write the dataset") from None
        if start < table.num_rows:
            self.pending[split] = [table.slice(start)]

    def finish(
        self, splits: dict[str, dict[str, Any]], extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write the remaining rows and the manifest (``splits``: each split's entry fields such as
        ``data_dim``/``shape``/``has_label``, beside the rows and files counted here)."""
        for split in list(self.pending):
            self._flush(split, final=True)
        manifest: dict[str, Any] = {"format": "rfdist-parquet-v1", "version": self.version, "splits": {}}
        for split, entry in self.splits.items():
            manifest["splits"][split] = {
                "rows": entry["rows"],
                "files": entry["files"],
                **splits.get(split, {}),
            }
        manifest.update(extra or {})
        try:
            _write_bytes_atomic(self.fs, join(self.root, MANIFEST), json.dumps(manifest, indent=1).encode())
            if _exists(self.fs, join(self.root, IN_PROGRESS)):
                self.fs.delete_file(join(self.root, IN_PROGRESS))
        except OSError as exc:
            raise _storage_error(self.uri, exc, "write the dataset") from None
        self.finished = True
        if self.previous is not None:  # drop the superseded version's shards (best effort)
            for entry in self.previous["splits"].values():
                _delete_quietly(self.fs, self.root, entry["files"])
        return manifest

    def __exit__(self, *exc_info: Any) -> None:
        if self.finished:
            return
        _delete_quietly(self.fs, self.root, [f for e in self.splits.values() for f in e["files"]])
        if self.previous is None:
            _delete_quietly(self.fs, self.root, [IN_PROGRESS])
            folders = [join(self.root, split) for split in self.splits]
            for folder in [*folders, *([self.root] if self.created_root else [])]:
                with contextlib.suppress(OSError):
                    if not self.fs.get_file_info(pafs.FileSelector(folder)):  # only empty ones
                        self.fs.delete_dir(folder)

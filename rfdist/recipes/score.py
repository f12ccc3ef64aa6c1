"""Batch scoring of a dataset with a logged flow on Ray Data (``rfdist score``).

The model is rebuilt on the driver with the installed rfdist (:func:`rfdist.tracking.models.load_flow`:
no code from the artifact store), its weights handed to a pool of scoring actors
(``map_batches`` with a callable class; one GPU each when the cluster has GPUs), and every row
of the chosen split becomes one output row: the input's ``id``/``label`` columns (``row_index``,
the row's 0-based position in the split, in place of a missing ``id``: a join key), ``log_prob``
(data space), ``log_prob_model`` (the model's space, e.g. logit space for images),
``reconstruction_error`` (``‖z − g(g†(z))‖²``) and ``latent`` (``d`` floats). Logit
preprocessing is scored without dequantisation noise, so a re-run gives the same numbers.

Output (local folder or ``s3://``) is Parquet plus ``_SUCCESS`` (a JSON summary with
``format: rfdist-score-v1`` listing the files), written to a sibling ``OUT.tmp-*``, checked,
and only then published: locally the whole folder appears at once (renamed); on S3 (no renames)
the files are copied in and ``_SUCCESS`` is written last, so a reader trusts only the files it
lists. An existing ``OUT`` is replaced only when it is wholly an earlier score output (that
``_SUCCESS`` and the files it lists); anything else is refused untouched.
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from rfdist.data.errors import DataError

__all__ = ["SUCCESS", "ScoreResult", "Scorer", "score_dataset", "score_table"]

SUCCESS = "_SUCCESS"
FORMAT = "rfdist-score-v1"
"""The ``format`` of the ``_SUCCESS`` JSON: how ``score`` recognises an output it may replace."""
PASSTHROUGH = ("id", "row_index", "label")
ROW_INDEX = "row_index"
SCORE_COLUMNS = ("log_prob", "log_prob_model", "reconstruction_error", "latent")


@dataclass
class ScoreResult:
    """What :func:`score_dataset` wrote."""

    out: str
    rows: int
    files: list[str]


def score_table(
    model, table: pa.Table, *, features: list[str] | None, dim: int, preprocess: dict | None, device: str
) -> pa.Table:
    """Score one Arrow batch: pass-through columns + log_prob, log_prob_model, reconstruction_error, latent."""
    from rfdist.data.reader import arrow_to_numpy
    from rfdist.tracking.pyfunc import score_rows

    # Arrow's buffers are read-only: torch warns on a non-writable array, so copy only those
    x = torch.from_numpy(np.require(arrow_to_numpy(table, features, dim), requirements="W")).to(device)
    scores = score_rows(model, x, preprocess)
    latent = scores["latent"].float().cpu().numpy()
    columns = {name: table.column(name) for name in PASSTHROUGH if name in table.column_names}
    columns["log_prob"] = pa.array(scores["log_prob"].cpu().numpy())
    columns["log_prob_model"] = pa.array(scores["log_prob_model"].cpu().numpy())
    columns["reconstruction_error"] = pa.array(scores["reconstruction_error"].cpu().numpy())
    columns["latent"] = pa.FixedSizeListArray.from_arrays(pa.array(latent.reshape(-1)), latent.shape[1])
    return pa.table(columns)


class Scorer:
    """A Ray Data actor: builds the flow once, then scores Arrow batches on its device."""

    def __init__(self, spec: dict, state: dict, preprocess: dict | None, features, dim: int) -> None:
        from rfdist.core.builders import ModelSpec, build_model

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = build_model(ModelSpec.from_dict(spec))
        model.load_state_dict(state)
        self.model = model.to(self.device).eval()
        self.preprocess, self.features, self.dim = preprocess, features, dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(
            self.model,
            batch,
            features=self.features,
            dim=self.dim,
            preprocess=self.preprocess,
            device=self.device,
        )


def _own_output(fs: pafs.FileSystem, root: str) -> str | None:
    """``None`` when ``root`` holds only what an earlier ``rfdist score`` wrote, else why not.

    Ours means: a ``_SUCCESS`` JSON with :data:`FORMAT`, and no file it does not list (a Spark
    or Hadoop output also has a ``_SUCCESS``, an empty one).
    """
    from rfdist.data.fs import join

    try:
        with fs.open_input_stream(join(root, SUCCESS)) as handle:
            summary = json.loads(handle.read())
    except (OSError, ValueError):
        summary = None
    if not isinstance(summary, dict) or summary.get("format") != FORMAT:
        return f"has no {SUCCESS} written by `rfdist score`"
    listed = {SUCCESS, *summary.get("files", [])}
    entries = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    for entry in sorted(entries, key=lambda e: e.path):
        name = entry.path[len(root) + 1 :]
        if entry.type != pafs.FileType.Directory and name not in listed:
            return f"holds {name}, which `rfdist score` did not write"
    return None


def _output(out: str) -> tuple[pafs.FileSystem, str, bool]:
    """``(filesystem, root, is_s3)``; refuses a non-empty folder that is not wholly a previous score output."""
    from rfdist.data.fs import resolve

    fs, root = resolve(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise DataError(f"--out {out}: is a file, expected a folder")
    if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
        reason = _own_output(fs, root)
        if reason:
            raise DataError(f"--out {out}: exists and {reason}; nothing was changed: choose a new folder")
    return fs, root, out.startswith("s3://")


def _publish(fs: pafs.FileSystem, folder: str, summary: dict[str, Any]) -> None:
    """Write ``_SUCCESS`` atomically (tmp + move locally, one PUT on S3)."""
    from rfdist.data.fs import join

    data = json.dumps(summary, indent=1).encode()
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = join(folder, f"{SUCCESS}.tmp-{uuid.uuid4().hex}")
        with fs.open_output_stream(tmp) as handle:
            handle.write(data)
        fs.move(tmp, join(folder, SUCCESS))
    else:
        with fs.open_output_stream(join(folder, SUCCESS)) as handle:
            handle.write(data)


def _parquet_files(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    entries = fs.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    return sorted((e for e in entries if e.base_name.endswith(".parquet")), key=lambda e: e.path)


def _open_inputs(model_uri: str, data: str, split: str, tracking_uri: str | None) -> tuple[Any, Any, dict]:
    """``(loaded flow, dataset info, preprocess)``; bad input raises ``DataError`` naming the option."""
    from rfdist.data.reader import open_dataset
    from rfdist.tracking.models import load_flow, resolve_tracking_uri

    loaded = load_flow(model_uri, tracking_uri=resolve_tracking_uri(tracking_uri))
    model = loaded.model
    try:
        info = open_dataset(data)
    except DataError as exc:
        raise DataError(f"--data: {exc}") from None
    if split not in info.splits:
        raise DataError(f"--split {split}: {data} has no such split (found {', '.join(sorted(info.splits))})")
    if info.data_dim != model.data_dim:
        raise DataError(
            f"--data {data}: rows have {info.data_dim} values, the model expects {model.data_dim}"
        )
    preprocess = loaded.preprocess
    if preprocess is None:  # models logged before preprocess.json: the evaluation default
        preprocess = {"kind": "logit" if len(model.data_shape) == 3 else "none", "stats": info.stats}
    return loaded, info, preprocess


def _row_groups(files: list[str], filesystem: pafs.FileSystem) -> list[dict[str, Any]]:
    """One item per Parquet row group of ``files`` with its first row's position in the split."""
    items, offset = [], 0
    for path in files:
        metadata = pq.read_metadata(path, filesystem=filesystem)
        for group in range(metadata.num_row_groups):
            items.append({"path": path, "group": group, "offset": offset})
            offset += metadata.row_group(group).num_rows
    return items


def _read_row_groups(batch: pa.Table, *, filesystem: pafs.FileSystem, columns: list[str]) -> pa.Table:
    """The rows of each row group in ``batch`` (from :func:`_row_groups`), with ``row_index``."""
    tables = []
    for path, group, offset in zip(*(batch.column(c).to_pylist() for c in ("path", "group", "offset")), strict=True):
        with filesystem.open_input_file(path) as handle:
            table = pq.ParquetFile(handle).read_row_group(group, columns=columns)
        index = pa.array(np.arange(offset, offset + table.num_rows, dtype=np.int64))
        tables.append(table.append_column(ROW_INDEX, index))
    return pa.concat_tables(tables)


def _read_split(info: Any, split: str, columns: list[str]) -> Any:
    """The split as a Ray Dataset of ``columns``; with ``row_index`` when the input has no ``id``.

    Ray Data's Parquet reader numbers no rows, so without an ``id`` the split is read by row
    group, each one knowing (from the Parquet footers, read here) where it starts.
    """
    import ray.data

    files = info.splits[split]
    if "id" in columns:
        return ray.data.read_parquet(files, filesystem=info.filesystem).select_columns(columns)
    groups = _row_groups(files, info.filesystem)
    return ray.data.from_items(groups, override_num_blocks=max(1, len(groups))).map_batches(
        _read_row_groups,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"filesystem": info.filesystem, "columns": columns},
    )


def _scored(
    loaded: Any, info: Any, split: str, preprocess: dict, *, batch_size: int, actors: int | None
) -> tuple[Any, list[str]]:
    """``(lazy Ray Dataset of scored rows, output pass-through columns)``: a pool of :class:`Scorer` actors."""
    import ray
    from ray.data import ActorPoolStrategy

    gpus = int(ray.cluster_resources().get("GPU", 0))
    pool = actors or (gpus or max(1, math.floor(ray.cluster_resources().get("CPU", 1) / 2)))
    schema = pq.read_schema(info.splits[split][0], filesystem=info.filesystem)
    columns = [*info.columns(), *(["id"] if "id" in schema.names and "id" not in info.columns() else [])]
    ds = _read_split(info, split, columns)
    scored = ds.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "spec": loaded.spec.to_dict(),
            "state": {k: v.cpu() for k, v in loaded.model.state_dict().items()},
            "preprocess": preprocess,
            "features": info.features,
            "dim": info.data_dim,
        },
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=1, max_size=pool),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    passthrough = [*columns, *([] if "id" in columns else [ROW_INDEX])]
    return scored, passthrough


def _write_scores(
    output: tuple[pafs.FileSystem, str, bool],
    scored: Any,
    source: dict[str, Any],
    columns: list[str],
    expected_rows: int | None,
) -> dict[str, Any]:
    """Write ``scored`` to ``output`` (:func:`_output`) with its ``_SUCCESS``; returns that summary.

    Everything is written to a sibling ``OUT.tmp-*`` first and checked (rows scored vs
    ``expected_rows``); only then does the output replace an earlier one: locally by renames
    (the folder appears whole), on S3 (no renames) by copying the files in and writing
    ``_SUCCESS`` last, after the old ``_SUCCESS`` is gone. A failed check leaves ``OUT`` as it was.
    """
    fs, root, is_s3 = output
    target = f"{root}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        scored.write_parquet(target, filesystem=fs)
        files = _parquet_files(fs, target)
        rows = sum(pq.read_metadata(e.path, filesystem=fs).num_rows for e in files)
        if expected_rows is not None and rows != expected_rows:
            raise DataError(
                f"--data {source['data']}: scored {rows} rows, but split {source['split']!r} has "
                f"{expected_rows} (manifest and shards disagree); --out {source['out']} was not changed"
            )
        names = [e.path[len(target) + 1 :] for e in files]
        summary = {"format": FORMAT, **source, "rows": rows, "files": names, "columns": columns}
        (_replace_s3 if is_s3 else _replace_local)(fs, target, root, summary)
    finally:
        if fs.get_file_info(target).type == pafs.FileType.Directory:
            fs.delete_dir(target)
    return summary


def _replace_local(fs: pafs.FileSystem, target: str, root: str, summary: dict[str, Any]) -> None:
    """Publish ``target`` as ``root``: ``_SUCCESS`` in, then two renames (an old output goes last)."""
    fs.create_dir(target, recursive=True)
    _publish(fs, target, summary)
    old = None
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        old = f"{root}.old-{uuid.uuid4().hex[:12]}"
        fs.move(root, old)  # checked by _output: only an earlier score output
    fs.move(target, root)
    if old:
        fs.delete_dir(old)


def _replace_s3(fs: pafs.FileSystem, target: str, root: str, summary: dict[str, Any]) -> None:
    """Publish ``target`` under ``root`` on S3: old ``_SUCCESS`` first, its files, new files, new ``_SUCCESS``."""
    from rfdist.data.fs import join

    if fs.get_file_info(join(root, SUCCESS)).type == pafs.FileType.File:
        fs.delete_file(join(root, SUCCESS))  # the previous output is no longer complete
        fs.delete_dir_contents(root, missing_dir_ok=True)  # checked by _output: only its own files
    for name in summary["files"]:
        fs.copy_file(join(target, name), join(root, name))
    _publish(fs, root, summary)


def score_dataset(
    model_uri: str,
    data: str,
    out: str,
    *,
    split: str = "test",
    address: str | None = None,
    tracking_uri: str | None = None,
    batch_size: int = 1024,
    actors: int | None = None,
    progress: bool | None = None,
) -> ScoreResult:
    """Score ``split`` of ``data`` with ``model_uri`` and write Parquet to ``out`` (see module doc).

    Everything that can be checked (model, dataset, split, row width, every shard's footer vs
    the manifest — train's :func:`~rfdist.recipes.preflight.check_shards` — and the output
    folder) is checked before Ray starts; bad input raises ``DataError`` with one line naming the option.
    ``progress``: Ray Data's progress bars (default: only when stderr is a terminal).
    """
    from rfdist.recipes.preflight import check_shards

    if batch_size < 1:
        raise DataError(f"--batch-size must be >= 1 (got {batch_size})")
    loaded, info, preprocess = _open_inputs(model_uri, data, split, tracking_uri)
    output = _output(out)
    footer_rows = check_shards(info, [split], option="--data")[split]
    expected = info.rows.get(split, footer_rows)
    if expected != footer_rows:
        raise DataError(
            f"--data {data}: the manifest says split {split!r} has {expected} rows, its shards hold "
            f"{footer_rows}"
        )

    import ray.data

    from rfdist.runtime.cluster import connect_or_start_ray

    connect_or_start_ray(address, 4)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty() if progress is None else progress
    scored, columns = _scored(loaded, info, split, preprocess, batch_size=batch_size, actors=actors)
    source = {"model_uri": model_uri, "data": data, "split": split, "out": out}
    columns = [*(c for c in PASSTHROUGH if c in columns), *SCORE_COLUMNS]
    summary = _write_scores(output, scored, source, columns, expected)
    return ScoreResult(out=out, rows=summary["rows"], files=summary["files"])


def read_scores(out: str) -> pa.Table:
    """The table an ``rfdist score`` run wrote (only the files its ``_SUCCESS`` lists)."""
    from rfdist.data.fs import join, resolve

    fs, root = resolve(out)
    with fs.open_input_stream(join(root, SUCCESS)) as handle:
        summary = json.loads(handle.read())
    tables = [pq.read_table(join(root, name), filesystem=fs) for name in summary["files"]]
    return pa.concat_tables(tables) if tables else pa.table({})


def latent_matrix(table: pa.Table) -> np.ndarray:
    """The ``latent`` column as an ``(N, d)`` float32 array."""
    column = table.column("latent").combine_chunks()
    return np.asarray(column.flatten().to_numpy(), dtype=np.float32).reshape(len(column), -1)

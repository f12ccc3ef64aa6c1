"""Up-front checks: what can be known before Ray starts is checked here, in seconds, in one line.

Called by the drivers (``rfdist train``, ``rfdist sweep``, ``rfdist submit`` when it validates)
so that a run that cannot work fails before any worker, MLflow run or checkpoint exists:

- :func:`check_config` — config-only facts: ``train.batch_size`` vs ``scaling.num_workers``, a
  synthetic dataset's rows vs the batch, a sweep's ASHA ``grace_period`` vs its steps;
- :func:`check_data` — every shard of every split against train's schema (D, shape, value type;
  the reader's own :func:`rfdist.data.reader.x_layout`, footers only), rows per worker vs the
  per-worker batch (``drop_last``), a non-empty ``val`` split for every worker, and the values
  of a bounded sample (the first :data:`rfdist.data.validate.SAMPLE_ROWS` rows of each shard,
  at most :data:`~rfdist.data.validate.SAMPLE_TOTAL_ROWS` in all): nulls, NaN/inf, values too
  large for float32, a non-integer ``label``;
- :func:`check_devices` — ``scaling.use_gpu`` against the GPUs this machine has (a local Ray);
- :func:`check_tracking` / :func:`check_storage` — the MLflow store and ``storage.path`` are
  reachable and writable (bounded timeouts: a dead server costs seconds, not minutes).

Config and data problems raise :class:`~rfdist.config.ConfigError` / ``DataError`` (exit 2);
an unreachable or unwritable service raises :class:`UnreachableError` (exit 1).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rfdist.config import ConfigError, RunConfig

__all__ = [
    "MLFLOW_CLI_HTTP",
    "UnreachableError",
    "bound_mlflow_http",
    "check_config",
    "check_data",
    "check_devices",
    "check_shards",
    "check_storage",
    "check_tracking",
]

PROBE_TIMEOUT_S = 5.0
"""Seconds the tracking probe waits for any HTTP answer."""

MLFLOW_CLI_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP retry/timeout bounds for short CLI commands (``models``, ``eval``): defaults are
7 retries with backoff 2 (~4 minutes against a dead server). Never set for training: its
workers must ride out a tracking-server outage."""


class UnreachableError(RuntimeError):
    """A service the run needs (tracking store, S3 storage) cannot be reached or written."""


def bound_mlflow_http(environ: dict[str, str] | None = None) -> None:
    """Bound MLflow's HTTP retries in this process (for short CLI commands only)."""
    env = os.environ if environ is None else environ
    for key, value in MLFLOW_CLI_HTTP.items():
        env.setdefault(key, value)


# ------------------------------------------------------------------------------- config
def check_config(cfg: RunConfig, *, sweep: bool = False) -> None:
    """Facts the config alone decides (no data, no network)."""
    workers, batch = cfg.scaling.max_workers, cfg.train.batch_size
    if batch < workers:
        raise ConfigError(
            f"train.batch_size: {batch} is smaller than scaling.num_workers={workers} "
            "(every worker needs at least one row per step)"
        )
    if cfg.data.synthetic is not None:
        where = f"data.synthetic {cfg.data.synthetic} (data.train_rows/test_rows)"
        _check_rows(cfg, "train", cfg.data.train_rows, where)
        _check_rows(cfg, "val", max(1, cfg.data.test_rows // 2), where)  # as materialize_synthetic
    if sweep and cfg.tune.scheduler == "asha":
        steps = cfg.tune.max_steps or cfg.train.max_steps
        if cfg.tune.grace_period > steps:
            source = "tune.max_steps" if cfg.tune.max_steps else "train.max_steps"
            raise ConfigError(
                f"tune.grace_period: {cfg.tune.grace_period} steps is more than the {steps} steps a "
                f"trial runs ({source}); ASHA needs grace_period <= max_steps"
            )


def _check_rows(cfg: RunConfig, split: str, rows: int, where: str) -> None:
    workers = cfg.scaling.max_workers
    per_worker = rows // workers
    if split == "train":
        batch = cfg.train.batch_size // workers
        if per_worker < batch:
            raise ConfigError(
                f"train.batch_size: {cfg.train.batch_size} over {workers} worker(s) is {batch} rows per "
                f"worker and step, but the train split of {where} has {rows} rows ({per_worker} per "
                "worker): lower train.batch_size or add rows"
            )
    elif per_worker < 1:
        raise ConfigError(
            f"data.path: the {split!r} split of {where} has {rows} rows; validation needs at least "
            f"one row per worker (scaling.num_workers={workers})"
        )


# --------------------------------------------------------------------------------- data
def check_data(cfg: RunConfig, info: Any) -> dict[str, int]:
    """Every split's shards vs train's schema; rows per worker vs the batch. Returns rows per split.

    Reads every Parquet footer (schema and row count) and a bounded sample of values.
    """
    rows = check_shards(info, sorted(info.splits, key=lambda split: split != "train"))
    _check_rows(cfg, "train", rows.get("train", 0), info.uri)
    _check_rows(cfg, "val", rows.get("val", 0), info.uri)
    return rows


def check_shards(info: Any, splits: list[str], *, option: str = "data.path") -> dict[str, int]:
    """Footers of every shard of ``splits`` against the first's schema; rows per split.

    ``option`` names the setting in the error line (``data.path`` for train, ``--data`` for
    score). The first split is the reference (train's, for training).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rfdist.data.errors import DataError, arrow_reason
    from rfdist.data.validate import SAMPLE_ROWS, SAMPLE_TOTAL_ROWS, sample_problem, unreadable_reason

    want: tuple | None = None
    sampled = 0
    rows: dict[str, int] = {}
    for split in splits:
        rows[split] = 0
        for path in info.splits[split]:
            where = f"{info.uri}: {'/'.join(path.rsplit('/', 2)[-2:])}"
            try:
                handle = pq.ParquetFile(path, filesystem=info.filesystem)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(
                    f"{option}: {where} is not a readable Parquet file ({arrow_reason(exc)})"
                ) from None
            got = _signature(handle.schema_arrow, info.features, where, option)
            if want is None:
                want = got
            elif got != want:
                raise DataError(
                    f"{option}: {where} has D={got[0]} shape={got[1]} {got[2]}, but {splits[0]} has "
                    f"D={want[0]} shape={want[1]} {want[2]}; every split must match {splits[0]} "
                    f"(`rfdist data validate {info.uri}` lists every problem)"
                )
            rows[split] += handle.metadata.num_rows
            if sampled < SAMPLE_TOTAL_ROWS:  # values, not only the footer (bounded read)
                take = min(SAMPLE_ROWS, SAMPLE_TOTAL_ROWS - sampled)
                try:
                    problem = sample_problem(info.filesystem, path, where, info.features, take)
                except (pa.ArrowInvalid, OSError) as exc:
                    problem = f"{where}: {unreadable_reason(info.filesystem, path, exc)}"
                if problem is not None:
                    raise DataError(f"{option}: {problem}")
                sampled += min(take, handle.metadata.num_rows)
    return rows


def check_devices(cfg: RunConfig, address: str | None) -> None:
    """``scaling.use_gpu`` vs the GPUs present: for a local Ray, this machine's CUDA devices.

    Ray Train would otherwise wait for GPUs that never come (its worker-group timeout, then a
    retry). A cluster (``address`` or ``RAY_ADDRESS``) is checked once connected
    (:func:`rfdist.runtime.cluster.check_cluster_gpus`): its nodes, not this machine, have them.
    """
    if not cfg.scaling.use_gpu or address or os.environ.get("RAY_ADDRESS"):
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    workers = cfg.scaling.min_workers
    if found < workers * (cfg.scaling.gpus_per_worker or 1.0):
        raise ConfigError(
            f"scaling.use_gpu: true needs a GPU per worker ({workers} at least), but this machine has "
            f"{found} CUDA device(s); set scaling.use_gpu=false, lower scaling.num_workers, or "
            "pass --address of a Ray cluster with GPUs"
        )


def _signature(
    schema: Any, features: list[str] | None, where: str, option: str = "data.path"
) -> tuple[int, tuple[int, ...], str]:
    """``(D, row shape, stored value type)`` of a shard, read as the reader reads it."""
    from rfdist.data.errors import DataError
    from rfdist.data.reader import x_layout

    if features:
        missing = [f for f in features if f not in schema.names]
        if missing:
            raise DataError(f"{option}: {where}: column {missing[0]!r} (data.features) not found")
        return len(features), (len(features),), ",".join(str(schema.field(f).type) for f in features)
    if "x" not in schema.names:
        raise DataError(f"{option}: {where}: no column 'x' (columns are {schema.names})")
    dim, shape, _, _ = x_layout(schema, where)
    return dim, tuple(shape), str(schema.field("x").type.value_type)


# ----------------------------------------------------------------------------- services
def check_tracking(uri: str, *, timeout: float = PROBE_TIMEOUT_S) -> None:
    """The MLflow store at ``uri`` answers (http/https) or can be written (sqlite), in seconds."""
    from rfdist.tracking.models import redact_uri

    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        shown = redact_uri(uri)
        probe = f"{shown.rstrip('/')}/health"
        try:
            with urllib.request.urlopen(probe, timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # it answered (401/404/… are the server's business, not reachability)
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise UnreachableError(
                f"tracking.uri {shown}: cannot reach the MLflow tracking server ({reason}); "
                "start it, or set tracking.uri / MLFLOW_TRACKING_URI"
            ) from None
    elif parts.scheme == "sqlite":
        database = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
        if database is None or str(database) in ("", ":memory:"):
            return
        folder = database.parent
        if not folder.is_dir():
            raise UnreachableError(f"tracking.uri {uri}: folder {folder} does not exist")
        writable = os.access(folder, os.W_OK) and (not database.exists() or os.access(database, os.W_OK))
        if not writable:
            raise UnreachableError(
                f"tracking.uri {uri}: {database if database.exists() else folder} is not writable "
                "(MLflow's sqlite store writes the database and a journal beside it)"
            )


def check_storage(path: str, storage_options: dict[str, Any] | None = None) -> None:
    """``storage.path`` can be reached (S3: a bucket lookup, bounded timeouts; other stores: a
    lookup of the path) or created locally."""
    from rfdist.data.fs import is_local

    if is_local(path):
        return _check_local_storage(path)
    import pyarrow.fs as pafs

    from rfdist.data.errors import DataError
    from rfdist.data.fs import describe_s3_error, resolve

    try:
        fs, prefix = resolve(path, storage_options)
    except DataError as exc:
        raise ConfigError(f"storage.path: {exc}") from None
    s3 = path.startswith("s3://")
    target = prefix.split("/", 1)[0] if s3 else prefix
    try:
        found = fs.get_file_info(target)
    except OSError as exc:
        reason = describe_s3_error(path, exc) if s3 else f"{path}: {str(exc).splitlines()[0][:200]}"
        raise UnreachableError(f"storage.path: {reason}") from None
    if s3 and found.type == pafs.FileType.NotFound:
        raise UnreachableError(f"storage.path: {path}: the S3 bucket {target!r} does not exist")


def _check_local_storage(path: str) -> None:
    """A local ``storage.path``: the folder exists or can be created, and is writable."""
    folder = Path(path.removeprefix("file://")).resolve()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"storage.path: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UnreachableError(f"storage.path: {existing} is not writable (checkpoints go under {folder})")

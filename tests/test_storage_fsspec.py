"""Every fsspec store through the one storage layer: ``memory://`` end to end, any registered
scheme (a ``gs://``-style path on a memory-backed stand-in for gcsfs), ``s3://`` through both
pyarrow's native client and s3fs on moto, ``storage_options`` from the config."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import ConfigError, load_config
from rfdist.data.errors import DataError
from rfdist.data.fs import resolve, storage_location
from rfdist.data.parquet import write_dataset
from rfdist.data.reader import iter_batches, load_split, open_dataset

from .s3_server import make_bucket, s3_server  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def test_memory_store_make_validate_import_and_read() -> None:
    """``memory://``: fsspec's in-process store, reached only through fsspec (no pyarrow client)."""
    root = f"memory://rfdist-{uuid.uuid4().hex[:8]}"
    result = cli("data", "make", "von-mises", "--out", f"{root}/vm", "--rows", "200")
    assert result.exit_code == 0, result.output
    assert fsspec.filesystem("memory").exists(f"{root}/vm/_MANIFEST.json")
    assert cli("data", "validate", f"{root}/vm").exit_code == 0
    info = open_dataset(f"{root}/vm")
    assert isinstance(info.filesystem, pafs.PyFileSystem) and info.rows["train"] == 200
    assert load_split(info, "train").shape == (200, 2)
    assert sum(len(b) for b in iter_batches(info, "val", batch_size=7)) == info.rows["val"]

    with fsspec.open(f"{root}/table.csv", "w") as handle:  # a user's table on the store
        handle.write("a,b\n" + "".join(f"{i},{i * 2}\n" for i in range(50)))
    result = cli("data", "import", f"{root}/table.csv", "--out", f"{root}/imported")
    assert result.exit_code == 0, result.output
    assert open_dataset(f"{root}/imported").rows == {"train": 40, "val": 5, "test": 5}


class RecordingGCS(MemoryFileSystem):
    """A stand-in for gcsfs under ``gs://`` (a memory store that records its constructor's
    options): gcsfs is not installed here, and the routing is the same for any scheme fsspec
    has an implementation for."""

    protocol = ("gs", "gcs")
    options: ClassVar[list[dict]] = []
    store: ClassVar[dict] = {}  # its own files, apart from memory://
    pseudo_dirs: ClassVar[list[str]] = [""]

    def __init__(self, **options):
        RecordingGCS.options.append(options)
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path):
        for prefix in ("gs://", "gcs://"):
            path = path.removeprefix(prefix)
        return super()._strip_protocol(path)


@pytest.fixture
def gs_store() -> Iterator[type[RecordingGCS]]:
    from fsspec.registry import _registry

    saved = _registry.get("gs")
    fsspec.register_implementation("gs", RecordingGCS, clobber=True)
    RecordingGCS.options.clear()
    RecordingGCS.store.clear()
    RecordingGCS.clear_instance_cache()
    try:
        yield RecordingGCS
    finally:
        _registry.pop("gs", None)  # back to the lazy entry (gcsfs) of known_implementations
        if saved is not None:
            _registry["gs"] = saved


def test_a_registered_scheme_serves_data_and_training_with_config_storage_options(
    gs_store, tmp_path: Path
) -> None:
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # the von-mises preset's circle, D=2
    write_dataset("gs://bucket/ds", {"train": {"x": x[:200]}, "val": {"x": x[200:250]}, "test": {"x": x[250:]}},
                  storage_options={"project": "p1"})  # fmt: skip
    assert gs_store.options[-1] == {"project": "p1"}  # storage_options reach the filesystem
    assert "/bucket/ds/_MANIFEST.json" in gs_store.store
    out = tmp_path / "m.json"
    result = cli(
        "train", str(ROOT / "rfdist/presets/von-mises.yaml"), "--local", "--json", str(out),
        "--set", "data.path=gs://bucket/ds", "--set", "data.synthetic=null",
        "--set", "data.storage_options={project: p2}",
        "--set", "train.max_steps=2", "--set", "train.batch_size=50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.isfinite(json.loads(out.read_text())["test_nll"])
    assert {"project": "p2"} in gs_store.options
    # Ray Train's storage on the same store: path without scheme, the fsspec filesystem beside it
    path, filesystem = storage_location("gs://bucket/runs", {"project": "p3"})
    assert path == "/bucket/runs" and isinstance(filesystem, pafs.PyFileSystem)


def test_storage_option_and_scheme_errors() -> None:
    with pytest.raises(DataError, match=r"unknown storage scheme 'nosuch'"):
        resolve("nosuch://bucket/ds")
    if importlib.util.find_spec("gcsfs") is None:
        with pytest.raises(
            DataError, match=r"gs:// filesystem needs a package: .*gcsfs.*rfdist-flows\[gcs\]"
        ):
            resolve("gs://bucket/ds")
    with pytest.raises(DataError, match=r"storage_options.client must be one of \['pyarrow', 'fsspec'\]"):
        resolve("s3://bucket/ds", {"client": "boto"})
    with pytest.raises(ConfigError, match=r"data.storage_options: .*'secret': credentials are not accepted"):
        load_config(None, ["data.storage_options={secret: s3cr3t}"])
    with pytest.raises(ConfigError, match=r"storage.storage_options: .*'account_key'"):
        load_config(None, ["storage.storage_options={account_key: k}"])
    with pytest.raises(ConfigError, match=r"'token': credentials"):
        load_config(None, ["data.path=gs://b/d", "data.storage_options={token: ya29.secret}"])
    assert load_config(None, ["storage.storage_options={token: anon}"]).storage.storage_options == {
        "token": "anon"
    }
    cfg = load_config(
        None, ["data.path=s3://b/d", "data.storage_options={endpoint_url: 'http://x:9000', client: fsspec}"]
    )
    assert cfg.flat()["data.storage_options.client"] == "fsspec"


@pytest.mark.parametrize("client", ["pyarrow", "fsspec"])
def test_s3_through_both_clients(s3_server: str, client: str) -> None:
    """The same dataset written and read through pyarrow's S3 client and through s3fs (moto)."""
    pytest.importorskip("s3fs")
    bucket = f"both-{client}"
    make_bucket(s3_server, bucket)
    options = {"client": client}
    fs, _ = resolve(f"s3://{bucket}/ds", options)
    assert isinstance(fs, pafs.PyFileSystem if client == "fsspec" else pafs.S3FileSystem)
    x = np.arange(30, dtype=np.float32).reshape(10, 3)
    write_dataset(f"s3://{bucket}/ds", {"train": {"x": x}, "val": {"x": x[:2]}}, storage_options=options)
    other = {"client": "pyarrow" if client == "fsspec" else "fsspec"}  # read back with the other one
    np.testing.assert_array_equal(
        load_split(open_dataset(f"s3://{bucket}/ds", storage_options=other), "train"), x
    )
    result = cli("data", "validate", f"s3://{bucket}/ds", "--storage-option", f"client={client}")
    assert result.exit_code == 0, result.output
    path, filesystem = storage_location(f"s3://{bucket}/runs", options)
    assert path == f"{bucket}/runs"
    filesystem.create_dir(f"{bucket}/runs/x")
    pq.write_table(pa.table({"a": [1]}), f"{bucket}/runs/x/t.parquet", filesystem=filesystem)
    native, _ = resolve(f"s3://{bucket}/runs")
    assert pq.read_table(f"{bucket}/runs/x/t.parquet", filesystem=native).num_rows == 1  # on the bucket


@pytest.mark.slow
def test_ray_data_reads_a_dataset_through_s3fs(shared_ray, s3_server: str) -> None:
    """Ray Data's read tasks get the pickled fsspec filesystem (s3fs on moto) and read every row."""
    pytest.importorskip("s3fs")
    from rfdist.runtime.datasets import ray_dataset

    make_bucket(s3_server, "ray-s3fs")
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    options = {"client": "fsspec"}
    write_dataset("s3://ray-s3fs/ds", {"train": {"x": x}}, shard_rows=5, storage_options=options)
    info = open_dataset("s3://ray-s3fs/ds", storage_options=options)
    rows = ray_dataset(info, "train").take_all()
    assert sorted(float(r["x"][0]) for r in rows) == sorted(x[:, 0].tolist())

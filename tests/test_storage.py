"""The one storage layer (rfdist.data.fs) on moto's S3 server: fsspec-style storage_options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
import pytest

from rfdist.data.errors import DataError
from rfdist.data.fs import resolve, storage_location
from rfdist.data.parquet import write_dataset
from rfdist.data.reader import load_split, open_dataset

from .s3_server import make_bucket, s3_server  # noqa: F401 - fixture


def test_profile_endpoint_and_option_errors(s3_server: str, tmp_path: Path, monkeypatch) -> None:
    make_bucket(s3_server, "opts")
    credentials = tmp_path / "credentials"
    credentials.write_text("[rf]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)  # only the options below say where and who
    options = {"profile": "rf", "endpoint_url": s3_server, "region": "us-east-1"}
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_dataset("s3://opts/ds", {"train": {"x": x}}, storage_options=options)
    info = open_dataset("s3://opts/ds", storage_options=options)
    np.testing.assert_array_equal(load_split(info, "train").numpy(), x)

    with pytest.raises(DataError, match="profile 'nobody' not found"):
        resolve("s3://opts/ds", {"profile": "nobody"})
    with pytest.raises(DataError, match="unknown storage option 'endpoint'"):
        resolve("s3://opts/ds", {"endpoint": s3_server})


def test_checkpoint_storage_goes_through_the_same_layer(s3_server: str) -> None:
    """Ray Train's storage: ``bucket/prefix`` and this layer's filesystem (same endpoint, timeouts)."""
    from rfdist.runtime.checkpoint import storage_target

    make_bucket(s3_server, "ckpt")
    path, fs = storage_target("s3://ckpt/runs/")
    assert path == "ckpt/runs" and isinstance(fs, pafs.S3FileSystem)
    with fs.open_output_stream("ckpt/runs/probe") as out:
        out.write(b"ok")
    assert resolve("s3://ckpt/runs")[0].open_input_stream("ckpt/runs/probe").read() == b"ok"
    assert storage_location("runs")[1] is None

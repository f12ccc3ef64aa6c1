"""The Parquet data layer: make, validate, read back (pyarrow and Ray Data), locally and on S3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.data.parquet import IN_PROGRESS, MANIFEST, write_dataset
from rfdist.data.preprocess import dequantize_logit, logit_inverse
from rfdist.data.reader import iter_batches, load_split, open_dataset
from rfdist.data.sources import read_idx
from rfdist.runtime.datasets import ray_dataset

from .s3_server import make_bucket, s3_server  # noqa: F401 - fixture

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def ray_local(shared_ray):
    """The worker's shared local Ray (tests/conftest.py)."""
    import ray

    return ray


def _ray_rows(ds) -> np.ndarray:
    return np.concatenate(
        [np.asarray(b["x"]) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    )


def _sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def test_make_validate_and_read_back_locally(tmp_path: Path) -> None:
    result = cli(
        "data", "make", "sphere", "--out", str(tmp_path / "s"), "--rows", "500", "--shard-rows", "128"
    )
    assert result.exit_code == 0, result.output
    result = cli("data", "validate", str(tmp_path / "s"))
    assert result.exit_code == 0 and "train=500" in result.output and "D=3" in result.output
    info = open_dataset(str(tmp_path / "s"))
    x = load_split(info, "train")
    assert x.shape == (500, 3) and len(info.splits["train"]) == 4
    torch.testing.assert_close(x.norm(dim=-1), torch.ones(500), atol=1e-5, rtol=0)
    streamed = torch.cat(list(iter_batches(info, "train", batch_size=100)))
    torch.testing.assert_close(streamed, x)


def test_s3_make_validate_and_read_back_identical_to_local(s3_server: str, tmp_path: Path, ray_local) -> None:
    make_bucket(s3_server, "rfdist-data")
    local, remote = str(tmp_path / "vm"), "s3://rfdist-data/datasets/vm"
    for uri in (local, remote):
        result = cli(
            "data", "make", "von-mises", "--out", uri, "--rows", "300", "--shard-rows", "100", "--seed", "3"
        )
        assert result.exit_code == 0, result.output
    result = cli("data", "validate", remote)
    assert result.exit_code == 0, result.output
    info_local, info_remote = open_dataset(local), open_dataset(remote)
    for split in ("train", "val", "test"):
        expected = load_split(info_local, split).numpy()
        np.testing.assert_array_equal(load_split(info_remote, split).numpy(), expected)
        streamed = _ray_rows(ray_dataset(info_remote, split))  # Ray does not keep shard order
        np.testing.assert_array_equal(_sorted_rows(streamed), _sorted_rows(expected))
    assert "testing" not in result.output  # credentials never printed


def test_ray_dataset_reads_a_block_per_shard_and_leaves_the_process_context_alone(
    tmp_path: Path, ray_local
) -> None:
    """rfdist's streamed reads use a task per shard (Ray's default reader bucketed a dataset into
    two blocks, so reads did not overlap) and switch Ray Data settings for its datasets only."""
    from ray.data import DataContext

    out = str(tmp_path / "vm")
    result = cli(
        "data", "make", "von-mises", "--out", out, "--rows", "400", "--shard-rows", "50", "--seed", "1"
    )
    assert result.exit_code == 0, result.output
    info = open_dataset(out)
    context = DataContext.get_current()
    before = (context.use_datasource_v2, context.op_resource_reservation_enabled)
    ds = ray_dataset(info, "train")
    assert (context.use_datasource_v2, context.op_resource_reservation_enabled) == before
    assert not ds.context.op_resource_reservation_enabled
    held = ds.materialize()
    assert held.num_blocks() == len(info.splits["train"]) > 2
    expected = load_split(info, "train").numpy()
    np.testing.assert_array_equal(_sorted_rows(_ray_rows(held)), _sorted_rows(expected))


def test_streamed_split_reads_shards_in_a_new_seeded_order_every_epoch(tmp_path: Path, ray_local) -> None:
    out = str(tmp_path / "vm")
    result = cli(
        "data", "make", "von-mises", "--out", out, "--rows", "400", "--shard-rows", "50", "--seed", "2"
    )
    assert result.exit_code == 0, result.output
    info = open_dataset(out)

    def epochs(ds, count: int) -> list[np.ndarray]:
        ds.context.execution_options.preserve_order = True  # block order = file order, for comparing
        return [_ray_rows(ds) for _ in range(count)]

    expected = _sorted_rows(load_split(info, "train").numpy())
    first, second = epochs(ray_dataset(info, "train", file_shuffle_seed=7), 2)
    for rows in (first, second):
        np.testing.assert_array_equal(_sorted_rows(rows), expected)  # every row once per epoch
    assert not np.array_equal(first, second)  # a new order each epoch (1 in 8! to be equal)
    again = epochs(ray_dataset(info, "train", file_shuffle_seed=7), 1)[0]
    np.testing.assert_array_equal(again, first)  # seeded: the same run's epoch 0 again
    other = epochs(ray_dataset(info, "train", file_shuffle_seed=8), 1)[0]
    assert not np.array_equal(other, first)
    unshuffled = epochs(ray_dataset(info, "train"), 2)
    np.testing.assert_array_equal(unshuffled[0], unshuffled[1])


@pytest.mark.slow
def test_mnist_and_fashion_mnist_carry_the_real_statistics_and_standard_splits(tmp_path: Path) -> None:
    """test = the official 10,000; val = a seeded draw from the 60,000; uint8 pixels."""
    for name, mean in (("mnist", 33.32), ("fashion-mnist", 72.94)):
        result = cli("data", "make", name, "--out", str(tmp_path / name))
        if result.exit_code != 0 and "not found" in result.output:
            pytest.fail(f"{name} source not installed: run scripts/install_datasets.sh (CI: setup.sh)")
        assert result.exit_code == 0, result.output
        info = open_dataset(str(tmp_path / name))
        assert info.rows == {"train": 55000, "val": 5000, "test": 10000}
        assert info.dtype == "uint8" and info.tensor and info.shape == (1, 28, 28)
        train, val = load_split(info, "train"), load_split(info, "val")
        assert train.shape == (55000, 1, 28, 28)
        assert abs(float(torch.cat([train, val]).double().mean()) - mean) < 0.01  # all 60,000
    first = open_dataset(str(tmp_path / "mnist"))
    result = cli("data", "make", "mnist", "--out", str(tmp_path / "m2"), "--val-rows", "1000", "--seed", "1")
    assert result.exit_code == 0, result.output
    other = open_dataset(str(tmp_path / "m2"))
    assert other.rows == {"train": 59000, "val": 1000, "test": 10000}
    torch.testing.assert_close(load_split(other, "test"), load_split(first, "test"))  # always the official
    assert not torch.equal(load_split(other, "val")[:1000], load_split(first, "val")[:1000])


def test_digits_has_1797_rows(tmp_path: Path) -> None:
    assert cli("data", "make", "digits", "--out", str(tmp_path / "d")).exit_code == 0
    info = open_dataset(str(tmp_path / "d"))
    assert sum(len(load_split(info, s)) for s in ("train", "val", "test")) == 1797
    assert info.has_label


def test_idx_reader_against_hand_made_file(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    (tmp_path / "a-idx3-ubyte").write_bytes(raw + data.tobytes())
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), data)


def test_rerun_replaces_shards_without_mixing(tmp_path: Path) -> None:
    out = str(tmp_path / "vm")
    cli("data", "make", "von-mises", "--out", out, "--rows", "200", "--seed", "1")
    first = load_split(open_dataset(out), "train")
    cli("data", "make", "von-mises", "--out", out, "--rows", "100", "--seed", "2")
    second = load_split(open_dataset(out), "train")
    assert second.shape == (100, 2) and not torch.equal(second[:100], first[:100])
    assert len(list((tmp_path / "vm" / "train").glob("*.parquet"))) == 1


def test_interrupted_make_leaves_nothing_validate_accepts(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "broken"
    calls = {"n": 0}
    original = pq.write_table

    def crash_after_one(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt("simulated kill")
        return original(*args, **kwargs)

    monkeypatch.setattr(pq, "write_table", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(
            str(out), {"train": {"x": np.zeros((10, 2))}, "val": {"x": np.zeros((5, 2))}}, shard_rows=5
        )
    monkeypatch.setattr(pq, "write_table", original)
    assert (out / IN_PROGRESS).exists() and not (out / MANIFEST).exists()
    result = cli("data", "validate", str(out))
    assert result.exit_code != 0 and "interrupted" in result.output


def test_user_table_with_named_feature_columns(tmp_path: Path) -> None:
    (tmp_path / "t" / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(size=50), "b": rng.normal(size=50), "note": ["x"] * 50})
    pq.write_table(table, tmp_path / "t" / "train" / "part-0.parquet")
    info = open_dataset(str(tmp_path / "t"), features=["a", "b"])
    x = load_split(info, "train")
    np.testing.assert_allclose(x.numpy(), np.column_stack([table["a"], table["b"]]).astype(np.float32))
    assert cli("data", "validate", str(tmp_path / "t"), "--features", "a,b").exit_code == 0


def test_dequantize_logit_round_trip_and_jacobian() -> None:
    pixels = torch.randint(0, 256, (3, 1, 2, 2)).double()
    z, logdet = dequantize_logit(pixels, dequantize=False, lam=1e-3)
    torch.testing.assert_close(logit_inverse(z, lam=1e-3), pixels)
    jac = torch.autograd.functional.jacobian(
        lambda v: dequantize_logit(v.view(1, 1, 2, 2), dequantize=False, lam=1e-3)[0].flatten(),
        pixels[0].flatten(),
    )
    torch.testing.assert_close(logdet[0], torch.linalg.slogdet(jac).logabsdet)


# ------------------------------------------------------------------------ bad input, one each
def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _vectors(rows: int, dim: int) -> pa.Table:
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(rows * dim, np.float32)), dim)})


def _expect_error(*args: str, contains: str) -> str:
    result = cli(*args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert lines and contains in lines[0], result.output
    return lines[0]


def test_missing_path(tmp_path: Path) -> None:
    _expect_error("data", "validate", str(tmp_path / "nowhere"), contains="not found")


def test_wrong_column_name(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train" / "a.parquet", pa.table({"a": [1.0, 2.0]}))
    line = _expect_error("data", "validate", str(tmp_path / "t"), "--features", "a,zz", contains="'zz'")
    assert "train/a.parquet" in line


def test_wrong_vector_length_across_shards(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train" / "a.parquet", _vectors(4, 3))
    _write(tmp_path / "t" / "train" / "b.parquet", _vectors(4, 5))
    _expect_error("data", "validate", str(tmp_path / "t"), contains="vector length 5")


def test_mixed_lengths(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train" / "a.parquet", pa.table({"x": pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]])}))
    _expect_error("data", "validate", str(tmp_path / "t"), contains="mixed vector lengths")


def test_nan_and_inf_rows(tmp_path: Path) -> None:
    values = np.ones(12, np.float32)
    values[7] = np.inf
    _write(
        tmp_path / "t" / "train" / "a.parquet",
        pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(values), 2)}),
    )
    line = _expect_error("data", "validate", str(tmp_path / "t"), contains="row 3")
    assert "NaN or inf" in line


def test_truncated_parquet_file(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train" / "a.parquet", _vectors(100, 4))
    path = tmp_path / "t" / "train" / "a.parquet"
    path.write_bytes(path.read_bytes()[:200])
    _expect_error("data", "validate", str(tmp_path / "t"), contains="not a readable Parquet file")


def test_empty_split(tmp_path: Path) -> None:
    _write(tmp_path / "t" / "train" / "a.parquet", _vectors(4, 2))
    _write(tmp_path / "t" / "val" / "a.parquet", _vectors(0, 2))
    _expect_error("data", "validate", str(tmp_path / "t"), contains="'val' is empty")


def test_unreachable_s3_endpoint_fails_fast() -> None:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.run(  # a hang guard, not a speed limit (bench/ measures speed)
        [sys.executable, "-m", "rfdist.cli", "data", "validate", "s3://bucket/data"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1  # a runtime failure, not bad input (2)
    assert "cannot reach the S3 endpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_credentials(tmp_path: Path) -> None:
    """A moto server with authentication on (no anonymous actions) refuses unknown keys."""
    from .s3_server import free_port

    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        client_env = {
            **os.environ,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY",
            "AWS_SECRET_ACCESS_KEY": "wrong-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        proc = subprocess.run(
            [sys.executable, "-m", "rfdist.cli", "data", "validate", "s3://bucket/data"],
            capture_output=True,
            text=True,
            env=client_env,
            timeout=120,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert proc.returncode != 0
    assert "refused the credentials" in proc.stderr, proc.stderr
    assert "wrong-secret" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr

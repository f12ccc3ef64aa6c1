"""Column formats: uint8 image tensors (bit-exact), the older float32 image layout, extra columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.data.parquet import SHAPE_KEY, write_dataset
from rfdist.data.preprocess import batch_preprocessor
from rfdist.data.reader import load_split, open_dataset
from rfdist.runtime.datasets import ray_dataset

runner = CliRunner()


def _pixels(rows: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).integers(0, 256, size=(rows, 1, 5, 4), dtype=np.uint8)
    x[0] = 0
    x[1] = 255  # both ends of the range survive
    return x


def _old_float_layout(uri: Path, x: np.ndarray) -> None:
    """The pre-uint8 image layout: fixed_size_list<float32> + ``rfdist.shape`` metadata, no manifest."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])})
    table = table.replace_schema_metadata({SHAPE_KEY: b"1,5,4"})
    for split in ("train", "val"):
        (uri / split).mkdir(parents=True)
        pq.write_table(table, uri / split / "part-0.parquet")


def test_uint8_images_round_trip_bit_exactly_with_extra_columns(tmp_path: Path) -> None:
    x, label = _pixels(300), np.arange(300) % 10
    factors = np.random.default_rng(1).normal(size=(300, 3))
    ids = np.arange(300, dtype=np.int64) * 7
    out = tmp_path / "img"
    manifest = write_dataset(
        str(out),
        {
            "train": {"x": x, "label": label, "columns": {"factors": factors, "id": ids}},
            "val": {"x": x[:, 0][:, None][::2], "label": label[::2]},  # a view with odd strides
            "test": {"x": x[:, 0], "label": label},  # (N, H, W)
        },
        shard_rows=128,
        extra={"intrinsic_dim": 3},
    )
    assert manifest["splits"]["train"]["dtype"] == "uint8" and manifest["intrinsic_dim"] == 3
    table = pa.concat_tables(pq.read_table(out / f) for f in manifest["splits"]["train"]["files"])
    x_type = table.schema.field("x").type
    assert x_type.extension_name == "arrow.fixed_shape_tensor" and x_type.value_type == pa.uint8()
    assert tuple(x_type.shape) == (1, 5, 4) and SHAPE_KEY not in (table.schema.metadata or {})
    np.testing.assert_array_equal(table.column("x").combine_chunks().to_numpy_ndarray(), x)  # bit-exact
    np.testing.assert_array_equal(np.stack(table.column("factors").to_numpy(zero_copy_only=False)), factors)
    np.testing.assert_array_equal(table.column("id").to_numpy(), ids)
    info = open_dataset(str(out))
    assert (info.dtype, info.tensor, info.shape, info.data_dim) == ("uint8", True, (1, 5, 4), 20)
    assert info.columns() == ["x", "label"]  # extra columns are not read for training
    xs, ys = load_split(info, "train", labels=True)
    assert xs.dtype == torch.float32
    np.testing.assert_array_equal(xs.numpy(), x.astype(np.float32))
    np.testing.assert_array_equal(ys.numpy(), label)
    np.testing.assert_array_equal(load_split(info, "val").numpy(), x[::2].astype(np.float32))
    np.testing.assert_array_equal(load_split(info, "test").numpy(), x.astype(np.float32))
    assert runner.invoke(app, ["data", "validate", str(out)]).exit_code == 0


def test_uint8_pixels_are_dequantised_like_float_pixels() -> None:
    """The worker's preprocessing gives the same logits from stored uint8 as from float pixels."""
    x = torch.from_numpy(_pixels(8))
    prep = batch_preprocessor("logit", (1, 5, 4))
    torch.manual_seed(0)
    from_uint8 = prep(x)
    torch.manual_seed(0)
    from_float = prep(x.float().reshape(8, -1))
    assert from_uint8.dtype == torch.float32
    torch.testing.assert_close(from_uint8, from_float, rtol=0, atol=0)


def test_ray_streams_uint8_tensors_and_the_old_float_layout(tmp_path: Path, shared_ray) -> None:
    x = _pixels(500)
    write_dataset(
        str(tmp_path / "new"), {"train": {"x": x, "columns": {"id": np.arange(500)}}}, shard_rows=200
    )
    _old_float_layout(tmp_path / "old", x)
    for name, dtype in (("new", torch.uint8), ("old", torch.float32)):
        info = open_dataset(str(tmp_path / name))
        batches = list(ray_dataset(info, "train").iter_torch_batches(batch_size=64))
        assert {tuple(b) for b in batches} == {("x",)}, name  # no extra columns travel
        rows = torch.cat([b["x"] for b in batches])
        assert rows.dtype == dtype and rows.shape == (500, 1, 5, 4), (name, rows.dtype, rows.shape)
        got = rows.reshape(500, -1).numpy().astype(np.uint8)
        expected = x.reshape(500, -1)
        order = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731 - Ray does not keep shard order
        np.testing.assert_array_equal(order(got), order(expected))


def _expect_error(uri: Path, contains: str) -> None:
    result = runner.invoke(app, ["data", "validate", str(uri)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and contains in lines[0], result.output


def test_validate_accepts_both_layouts_and_names_shape_problems(tmp_path: Path) -> None:
    x = _pixels(20)
    _old_float_layout(tmp_path / "old", x)
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "old")])
    assert result.exit_code == 0 and "shape=(1, 5, 4)" in result.output, result.output

    write_dataset(str(tmp_path / "new"), {"train": {"x": x}})
    result = runner.invoke(app, ["data", "validate", str(tmp_path / "new")])
    assert result.exit_code == 0 and "shape=(1, 5, 4)" in result.output, result.output

    # a tensor column whose shape disagrees with the manifest
    manifest_path = tmp_path / "new" / "_MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["splits"]["train"]["shape"] = [1, 4, 5]
    manifest_path.write_text(json.dumps(manifest))
    _expect_error(tmp_path / "new", "the manifest says (1, 4, 5)")

    # uint8 pixels without a (C, H, W) shape
    bad = tmp_path / "flat" / "train"
    bad.mkdir(parents=True)
    pq.write_table(
        pa.table({"x": pa.FixedShapeTensorArray.from_numpy_ndarray(x.reshape(20, 5, 4))}), bad / "a.parquet"
    )
    _expect_error(tmp_path / "flat", "uint8 tensors of shape (5, 4), expected (C, H, W)")


@pytest.mark.parametrize("bad", ["reserved", "length"])
def test_bad_extra_columns_are_refused(tmp_path: Path, bad: str) -> None:
    from rfdist.data.errors import DataError

    columns = {"label": np.zeros(4)} if bad == "reserved" else {"f": np.zeros(3)}
    with pytest.raises(DataError, match="columns"):
        write_dataset(str(tmp_path / "d"), {"train": {"x": _pixels(4), "columns": columns}})


@pytest.mark.slow
def test_old_float32_and_new_uint8_image_datasets_both_train_on_ray(tmp_path: Path, shared_ray) -> None:
    """Ray Train on digits stored both ways: uint8 tensors and the older float32 layout."""
    import math

    from rfdist.config import load_config
    from rfdist.data.sources import generate
    from rfdist.recipes.train import run_training

    splits = generate("digits").splits
    write_dataset(str(tmp_path / "uint8"), splits)
    old = tmp_path / "float32"
    for split, content in splits.items():
        _old_float_layout_split(old, split, content["x"])
    preset = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "digits.yaml"
    for layout in ("uint8", "float32"):
        assert open_dataset(str(tmp_path / layout)).dtype == layout
        cfg = load_config(
            preset,
            [
                f"name=digits-{layout}",
                f"data.path={tmp_path / layout}",
                "train.max_steps=4",
                "train.checkpoint_every=4",
                "train.log_every=2",
                f"storage.path={tmp_path / 'runs'}",
                f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"registry.name=digits-{layout}",
            ],
        )
        result = run_training(cfg, register=False)
        assert result.metrics["step"] == 4 and math.isfinite(result.metrics["val/nll"]), layout


def _old_float_layout_split(root: Path, split: str, x: np.ndarray) -> None:
    flat = x.reshape(len(x), -1).astype(np.float32)
    table = pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])})
    shape = ",".join(str(s) for s in x.shape[1:]).encode()
    (root / split).mkdir(parents=True)
    pq.write_table(table.replace_schema_metadata({SHAPE_KEY: shape}), root / split / "part-0.parquet")

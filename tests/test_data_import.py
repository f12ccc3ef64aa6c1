"""``rfdist data import``: a user's Parquet file, folder or CSV in; rfdist's layout and manifest out,
checked by ``data validate`` and trained on (``train --local``: one process, a few steps)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.data.reader import load_split, open_dataset

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args))


def circle_table(rows: int = 400, seed: int = 0) -> pa.Table:
    """Points near the unit circle (D=2, d=1, as the von-mises preset expects), a string column
    that is not a feature, an integer class and an ``id``; 400 rows: 40 val rows at 0.1."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(0, 2 * np.pi, rows)
    return pa.table(
        {
            "id": np.arange(rows) + 1000,
            "px": np.cos(angle),
            "py": np.sin(angle),
            "kind": pa.array(["a"] * rows),
            "cls": (angle > np.pi).astype(np.int32),
        }
    )


def train_local(tmp_path: Path, data: Path) -> dict:
    """Two steps on the imported data: enough to show the layout trains (finite NLL)."""
    out = tmp_path / "metrics.json"
    result = cli(
        "train", str(ROOT / "rfdist/presets/von-mises.yaml"), "--local", "--json", str(out),
        "--set", f"data.path={data}", "--set", "data.synthetic=null",
        "--set", "train.max_steps=2", "--set", "train.batch_size=50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_import_parquet_file_then_validate_and_train(tmp_path: Path) -> None:
    pq.write_table(circle_table(), tmp_path / "points.parquet")
    ds = tmp_path / "ds"
    result = cli("data", "import", str(tmp_path / "points.parquet"), "--out", str(ds), "--label", "cls")
    assert result.exit_code == 0, result.output
    assert "features px,py" in result.output  # numeric columns but id and the label; not 'kind'
    manifest = json.loads((ds / "_MANIFEST.json").read_text())
    assert {s: e["rows"] for s, e in manifest["splits"].items()} == {"train": 320, "val": 40, "test": 40}
    assert manifest["features"] == ["px", "py"] and manifest["splits"]["train"]["columns"] == ["id"]
    info = open_dataset(str(ds))
    assert info.data_dim == 2 and info.has_label
    # every source row lands in exactly one split, with its own features beside its id
    ids = np.concatenate(
        [pq.read_table(ds / f, columns=["id"]).column("id").to_numpy() for e in manifest["splits"].values()
         for f in e["files"]]
    )  # fmt: skip
    assert sorted(ids) == list(range(1000, 1400))
    first = pq.read_table(ds / manifest["splits"]["val"]["files"][0])
    row = first.column("id")[0].as_py() - 1000
    source = circle_table()
    assert np.allclose(
        load_split(info, "val")[0].numpy(), [source["px"][row].as_py(), source["py"][row].as_py()]
    )
    assert cli("data", "validate", str(ds)).exit_code == 0
    assert math.isfinite(train_local(tmp_path, ds)["test_nll"])


def test_import_csv_and_a_folder_of_parquet_files(tmp_path: Path) -> None:
    pacsv.write_csv(circle_table().drop_columns(["kind"]), tmp_path / "points.csv")
    ds = tmp_path / "from-csv"
    result = cli("data", "import", str(tmp_path / "points.csv"), "--out", str(ds),
                 "--features", "px,py", "--val-frac", "0.2", "--test-frac", "0", "--seed", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((ds / "_MANIFEST.json").read_text())
    assert {s: e["rows"] for s, e in manifest["splits"].items()} == {"train": 320, "val": 80}
    assert cli("data", "validate", str(ds)).exit_code == 0
    assert math.isfinite(train_local(tmp_path, ds)["test_nll"])  # no test split: val is scored

    folder = tmp_path / "flat"
    folder.mkdir()
    table = circle_table()
    pq.write_table(table.slice(0, 150), folder / "a.parquet")
    pq.write_table(table.slice(150), folder / "b.parquet")
    result = cli("data", "import", str(folder), "--out", str(tmp_path / "from-folder"), "--shard-rows", "100")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "from-folder/_MANIFEST.json").read_text())
    assert manifest["splits"]["train"]["rows"] == 320 and len(manifest["splits"]["train"]["files"]) == 4
    assert cli("data", "validate", str(tmp_path / "from-folder")).exit_code == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--features", "px,nope"], "--features column 'nope' not found"),
        (["--features", "px,kind"], "--features column 'kind' has type string, expected a number"),
        (["--label", "kind"], "--label column 'kind' has type string, expected integers"),
        (["--val-frac", "0"], "--val-frac must be > 0 and < 1 (got 0.0)"),
        (["--test-frac", "1.5"], "--test-frac must be >= 0 and < 1 (got 1.5)"),
        (["--val-frac", "0.5", "--test-frac", "0.5"], "--val-frac + --test-frac must be < 1"),
    ],
)
def test_import_refuses_bad_columns_and_fractions_in_one_line(tmp_path: Path, args, expected) -> None:
    pq.write_table(circle_table(20), tmp_path / "t.parquet")
    result = runner.invoke(
        app, ["data", "import", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "ds"), *args]
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not (tmp_path / "ds").exists()


def test_import_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    """A NaN after the first shards were written: the error names column and row, and no shard,
    marker or folder stays behind (200 rows, shards of 10: several shards exist before row 150)."""
    table = circle_table(200)
    py = table.column("py").to_numpy().copy()
    py[150] = np.nan
    table = table.set_column(table.schema.get_field_index("py"), "py", pa.array(py))
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=50)
    result = cli(
        "data", "import", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "ds"), "--shard-rows", "10"
    )
    assert result.exit_code == 2, result.output
    assert "column 'py' has a non-finite value (NaN/inf) in row 150" in result.stderr
    assert not (tmp_path / "ds").exists()

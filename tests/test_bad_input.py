"""Bad input at every entry point: one ``error:`` line, the right exit code, before Ray starts.

Exit codes: 2 for bad usage, config or data; 1 for a runtime failure (a tracking store or S3
storage that cannot be reached or written). Most cases run the CLI in this process (cheap) with
Ray's start replaced by a tripwire, which proves the check ran *before* Ray; a few run it as a
real subprocess to time the whole command. Rows of the reliability table (docs/guide/reliability.md) name these
tests (``test_bad_input[...]``).
"""

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
from typer.testing import CliRunner

from rfdist.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
VM = ROOT / "rfdist" / "presets" / "von-mises.yaml"
SWEEP = ROOT / "rfdist" / "presets" / "sweep-von-mises.yaml"
DEAD_HTTP = "http://127.0.0.1:9"  # nothing listens on the discard port


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    """A tripwire: starting Ray fails the test (every case here must stop before it)."""

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started: the bad input was not caught up front")

    monkeypatch.setattr("rfdist.runtime.cluster.init_ray", tripwire)
    monkeypatch.setattr("rfdist.recipes.sweep._init_ray", tripwire)
    monkeypatch.setattr("rfdist.runtime.cluster.connect_or_start_ray", tripwire)
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)


def _table(rows: int, dim: int, dtype=np.float32, value: float | None = None) -> pa.Table:
    x = np.random.default_rng(0).normal(size=(rows, dim)).astype(dtype)
    if value is not None and rows:
        x[rows // 2, 0] = value
    values = pa.array(x.reshape(-1), type=pa.from_numpy_dtype(dtype))
    return pa.table({"x": pa.FixedSizeListArray.from_arrays(values, dim)})


def dataset(root: Path, *, train=(400, 2), val=(100, 2), val_dtype=np.float32, value=None) -> Path:
    """A plain-layout dataset (``split/part.parquet``): rows and D per split, one odd value."""
    for split, (rows, dim), dtype in (("train", train, np.float32), ("val", val, val_dtype)):
        (root / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            _table(rows, dim, dtype, value if split == "train" else None), root / split / "a.parquet"
        )
    return root


def csv_as_parquet(root: Path) -> Path:
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "a.parquet").write_text("a,b\n1,2\n3,4\n")
    return root


def unwritable(tmp: Path) -> Path:
    """A folder this process cannot write: mode 555, or (as root) a read-only system folder."""
    folder = tmp / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root ignores modes
        folder = Path("/proc/sys")
    if os.access(folder, os.W_OK):
        pytest.skip("no folder here is unwritable for this user")
    return folder


def _train(tmp: Path, *sets: str, config: Path | None = VM, data: Path | None = None) -> list[str]:
    args = ["train"] + ([str(config)] if config else [])
    base = [f"storage.path={tmp / 'runs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"]
    if data is not None:
        base += [f"data.path={data}", "data.synthetic=null"]
    for item in [*base, *sets]:
        args += ["--set", item]
    return args


def _sweep(tmp: Path, *sets: str) -> list[str]:
    return ["sweep", *_train(tmp, *sets, config=SWEEP)[1:]]


# Each case: id -> (function of tmp_path giving argv, env, expected exit code, text in the error line).
CASES = {
    # --- data
    "data-val-D-differs": (
        lambda t: ["data", "validate", str(dataset(t / "d", val=(50, 3)))], {}, 2, "vector length 3",
    ),
    "data-huge-values": (
        lambda t: ["data", "validate", str(dataset(t / "d", value=1e30))], {}, 2, "value 1e+30 is too large",
    ),
    "data-csv-renamed-parquet": (
        lambda t: ["data", "validate", str(csv_as_parquet(t / "d"))], {}, 2, "not a readable Parquet file",
    ),
    "data-make-unknown-name": (
        lambda t: ["data", "make", "bogus", "--out", str(t / "o")], {}, 2, "unknown dataset 'bogus'",
    ),
    # --- train: data vs config, checked before Ray
    "train-batch-gt-synthetic-rows": (
        lambda t: _train(t, "data.train_rows=500"), {}, 2, "train.batch_size: 1000 over 1 worker(s)",
    ),
    "train-batch-gt-rows-per-worker": (
        lambda t: _train(t, "scaling.num_workers=2", "train.batch_size=500", data=dataset(t / "d", train=(400, 2))),
        {}, 2, "(200 per worker)",
    ),
    "train-empty-train-split": (
        lambda t: _train(t, data=dataset(t / "d", train=(0, 2))), {}, 2, "has 0 rows (0 per worker)",
    ),
    "train-batch-lt-workers": (
        lambda t: _train(t, "scaling.num_workers=2", "train.batch_size=1"), {}, 2,
        "train.batch_size: 1 is smaller than scaling.num_workers=2",
    ),
    "train-val-D-differs": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", val=(50, 3))), {}, 2,
        "val/a.parquet has D=3",
    ),
    "train-val-dtype-differs": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", val_dtype=np.float64)), {}, 2,
        "double, but train has D=2 shape=(2,) float",
    ),
    "train-empty-val-split": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", val=(0, 2))), {}, 2,
        "the 'val' split of",
    ),
    "train-val-rows-lt-workers": (
        lambda t: _train(t, "train.batch_size=100", "scaling.num_workers=2", data=dataset(t / "d", val=(1, 2))),
        {}, 2, "needs at least one row per worker",
    ),
    "train-csv-renamed-parquet": (
        lambda t: _train(t, data=csv_as_parquet(t / "d")), {}, 2, "not a readable Parquet file",
    ),
    "train-dataset-missing": (
        lambda t: _train(t, data=t / "nowhere"), {}, 2, "make it with `rfdist data make",
    ),
    # --- train: config files and overrides
    "train-empty-config": (
        lambda t: _train(t, config=(t / "e.yaml", (t / "e.yaml").write_text(""))[0]), {}, 2, "is empty",
    ),
    "train-yaml-syntax": (
        lambda t: _train(t, config=(t / "b.yaml", (t / "b.yaml").write_text("name: x\ntrain: [1\n"))[0]),
        {}, 2, "b.yaml:3:1: not valid YAML",
    ),
    "train-set-syntax": (lambda t: _train(t, "train.lr=[1"), {}, 2, "--set train.lr: cannot parse value '[1'"),
    "train-set-no-equals": (lambda t: _train(t, "train.lr"), {}, 2, "--set expects key=value"),
    "train-name-non-ascii": (lambda t: _train(t, "name=café"), {}, 2, "name: use 1-100 characters from A-Z"),
    "train-name-quote": (lambda t: _train(t, "name=it's"), {}, 2, "name: use 1-100 characters from A-Z"),
    "train-name-slash": (lambda t: _train(t, "name=a/b"), {}, 2, "name: use 1-100 characters from A-Z"),
    # --- train: services, checked before Ray (runtime: exit 1)
    "train-tracking-unreachable": (
        lambda t: _train(t, f"tracking.uri={DEAD_HTTP}"), {}, 1, "cannot reach the MLflow tracking server",
    ),
    "train-sqlite-readonly-folder": (
        lambda t: _train(t, f"tracking.uri=sqlite:///{unwritable(t)}/mlflow.db"), {}, 1, "is not writable",
    ),
    "train-sqlite-missing-folder": (
        lambda t: _train(t, f"tracking.uri=sqlite:///{t}/no/such/mlflow.db"), {}, 1, "does not exist",
    ),
    "train-storage-s3-unreachable": (
        lambda t: _train(t, "storage.path=s3://bucket/runs"),
        {"AWS_ENDPOINT_URL": DEAD_HTTP, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
         "AWS_DEFAULT_REGION": "us-east-1"},
        1, "storage.path: s3://bucket/runs: cannot reach the S3 endpoint",
    ),
    "train-storage-readonly": (
        lambda t: _train(t, f"storage.path={unwritable(t)}/runs"), {}, 1, "is not writable",
    ),
    "train-storage-bad-scheme": (
        lambda t: _train(t, "storage.path=nosuch://bucket/runs"), {}, 2, "unknown storage scheme 'nosuch'",
    ),
    # --- data: storage that cannot be reached is a runtime failure (exit 1)
    "data-make-s3-unreachable": (
        lambda t: ["data", "make", "von-mises", "--out", "s3://bucket/vm", "--rows", "50"],
        {"AWS_ENDPOINT_URL": DEAD_HTTP, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
         "AWS_DEFAULT_REGION": "us-east-1"},
        1, "s3://bucket/vm: cannot reach the S3 endpoint",
    ),
    "data-validate-s3-unreachable": (
        lambda t: ["data", "validate", "s3://bucket/vm"],
        {"AWS_ENDPOINT_URL": DEAD_HTTP, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
         "AWS_DEFAULT_REGION": "us-east-1"},
        1, "s3://bucket/vm: cannot reach the S3 endpoint",
    ),
    # --- sweep
    "sweep-grace-gt-steps": (
        lambda t: _sweep(t, "train.max_steps=60"), {}, 2, "tune.grace_period: 200 steps is more than the 60",
    ),
    "sweep-grace-gt-tune-max-steps": (
        lambda t: _sweep(t, "tune.max_steps=100"), {}, 2, "(tune.max_steps); ASHA needs",
    ),
    "sweep-batch-gt-rows": (lambda t: _sweep(t, "data.train_rows=100"), {}, 2, "train.batch_size: 1000"),
    "sweep-tracking-unreachable": (
        lambda t: _sweep(t, f"tracking.uri={DEAD_HTTP}"), {}, 1, "cannot reach the MLflow tracking server",
    ),
    "sweep-name-non-ascii": (lambda t: _sweep(t, "name=s\u00e9"), {}, 2, "name: use 1-100 characters"),
    # --- eval
    "eval-tracking-unreachable": (
        lambda t: ["eval", "models:/vm@latest", "--data", "synthetic:von-mises", "--tracking-uri", DEAD_HTTP],
        {}, 1, "cannot reach the MLflow tracking server",
    ),
    "eval-data-csv-renamed": (
        lambda t: ["eval", "models:/vm@latest", "--data", str(csv_as_parquet(t / "d")),
                   "--tracking-uri", f"sqlite:///{t / 'm.db'}"],
        {}, 2, "not a readable Parquet file",
    ),
    "eval-data-missing": (
        lambda t: ["eval", "models:/vm@latest", "--data", str(t / "nowhere"), "--tracking-uri", f"sqlite:///{t / 'm.db'}"],
        {}, 2, "dataset not found",
    ),
    # --- models
    "models-list-unreachable": (
        lambda t: ["models", "list"], {"MLFLOW_TRACKING_URI": DEAD_HTTP}, 1, "cannot reach the MLflow tracking server",
    ),
    "models-show-unreachable": (
        lambda t: ["models", "show", "vm@champion", "--tracking-uri", DEAD_HTTP], {}, 1,
        "cannot reach the MLflow tracking server",
    ),
    "models-promote-unreachable": (
        lambda t: ["models", "promote", "vm", "1", "prod", "--tracking-uri", DEAD_HTTP], {}, 1,
        "cannot reach the MLflow tracking server",
    ),
    "models-list-readonly-sqlite": (
        lambda t: ["models", "list", "--tracking-uri", f"sqlite:///{unwritable(t)}/mlflow.db"], {}, 1,
        "is not writable",
    ),
    "models-show-quote-in-name": (
        lambda t: ["models", "show", "it's", "--tracking-uri", f"sqlite:///{t / 'm.db'}"], {}, 2,
        "cannot find model \"it's\": no registered model named \"it's\"",
    ),
    # --- submit (validated here, before contacting any cluster)
    "submit-sweep-grace-gt-steps": (
        lambda t: ["submit", "sweep", str(SWEEP), "--address", DEAD_HTTP, "--set", "train.max_steps=60"],
        {}, 2, "tune.grace_period: 200 steps",
    ),
    "submit-train-batch-gt-rows": (
        lambda t: ["submit", "train", str(VM), "--address", DEAD_HTTP, "--set", "data.train_rows=10"],
        {}, 2, "train.batch_size: 1000 over 1 worker(s)",
    ),
    "submit-train-empty-config": (
        lambda t: ["submit", "train", str((t / "e.yaml", (t / "e.yaml").write_text(""))[0]), "--address", DEAD_HTTP],
        {}, 2, "is empty",
    ),
    "submit-train-name-non-ascii": (
        lambda t: ["submit", "train", str(VM), "--address", DEAD_HTTP, "--set", "name=ü"], {}, 2,
        "name: use 1-100 characters",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case: str, tmp_path: Path, monkeypatch) -> None:
    make_args, env, code, expected = CASES[case]
    monkeypatch.chdir(tmp_path)  # nothing may land in the checkout (.rfdist/data, mlflow.db)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = make_args(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.strip().splitlines() if " INFO mlflow." not in line]
    if args[:2] == ["data", "validate"]:  # one line per problem, none misleading
        assert lines and all(line.startswith("error: ") for line in lines), result.stderr
        assert "is empty" not in result.stderr and "Traceback" not in result.output
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()  # no Ray Train run folder, no checkpoint
    assert not list(tmp_path.glob("**/mlruns"))


def test_yaml_error_names_the_file_not_unicode_string(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  latent_dim: [1\n")
    result = CliRunner().invoke(app, ["config", str(bad)])
    assert result.exit_code == 2
    assert "<unicode string>" not in result.stderr and f"{bad}:4:1:" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_dataset_keeps_its_hint_and_a_corrupt_one_gets_none(tmp_path: Path) -> None:
    """The "make it with rfdist data make" hint only for a dataset that is not there."""
    corrupt = CliRunner().invoke(app, _train(tmp_path, data=csv_as_parquet(tmp_path / "d")))
    assert "rfdist data make" not in corrupt.stderr and corrupt.exit_code == 2


def test_quote_safe_filter_values() -> None:
    from rfdist.config import ConfigError
    from rfdist.tracking.runs import filter_value

    assert filter_value("runs") == "'runs'" and filter_value("it's") == '"it\'s"'
    with pytest.raises(ConfigError, match="both"):
        filter_value("a'b\"c")


def _cli_subprocess(
    args: list[str], env: dict[str, str], cwd: Path
) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "rfdist.cli", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )  # fmt: skip
    return proc, time.monotonic() - start


@pytest.mark.parametrize(
    "args",
    [["models", "list"], ["models", "show", "vm@champion"], ["train", str(VM)]],
    ids=["models-list", "models-show", "train"],
)
def test_dead_tracking_server_one_line_in_a_real_process(args: list[str], tmp_path: Path) -> None:
    """As the user runs it: a real process, a dead server → one line, exit 1 (was ~250 s, 140 lines)."""
    extra = ["--set", f"storage.path={tmp_path / 'runs'}"] if args[0] == "train" else []
    proc, seconds = _cli_subprocess([*args, *extra], {"MLFLOW_TRACKING_URI": DEAD_HTTP}, tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert "cannot reach the MLflow tracking server" in proc.stderr
    print(f"{args[0]} {args[1] if len(args) > 1 else ''}: {seconds:.1f} s")

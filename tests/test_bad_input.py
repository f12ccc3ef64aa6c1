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
def _no_ray(ray_tripwire, monkeypatch):
    """Every case here must stop before Ray starts; no cluster or store from the environment."""
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


def null_rows(root: Path) -> Path:
    """A plain dataset whose train shard has one null row in ``x`` (row 2)."""
    dataset(root)
    rows = [[0.1, 0.2], [0.3, 0.4], None, [0.5, 0.6]] * 100
    x = pa.array(rows, type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"x": x}), root / "train" / "a.parquet")
    return root


def null_label(root: Path) -> Path:
    """A plain dataset whose train ``label`` column has a null at row 1 (a readable column)."""
    dataset(root)
    table = _table(400, 2).append_column("label", pa.array([0, None] + [1] * 398, type=pa.int64()))
    pq.write_table(table, root / "train" / "a.parquet")
    return root


def string_labels(root: Path) -> Path:
    """A plain dataset whose train shard has a ``label`` column of strings."""
    dataset(root)
    table = _table(400, 2).append_column("label", pa.array(["cat", "dog"] * 200))
    pq.write_table(table, root / "train" / "a.parquet")
    return root


def mixed_shards(root: Path) -> Path:
    """A plain dataset whose train split has a float32 shard and a float64 shard."""
    dataset(root)
    pq.write_table(_table(100, 2, np.float64), root / "train" / "b.parquet")
    return root


def made(root: Path, edit=None) -> Path:
    """A dataset written by rfdist (manifest layout), its manifest changed by ``edit(manifest)``."""
    import json

    from rfdist.data.parquet import write_dataset

    rng = np.random.default_rng(0)
    write_dataset(
        str(root), {"train": {"x": rng.normal(size=(400, 2))}, "val": {"x": rng.normal(size=(100, 2))}}
    )
    if edit is not None:
        manifest = json.loads((root / "_MANIFEST.json").read_text())
        edit(manifest)
        (root / "_MANIFEST.json").write_text(json.dumps(manifest))
    return root


def _set_split(split: str, key: str, value):
    return lambda manifest: manifest["splits"][split].__setitem__(key, value)


def missing_shard(root: Path) -> Path:
    """A manifest dataset whose val shard was deleted."""
    made(root)
    for shard in (root / "val").glob("*.parquet"):
        shard.unlink()
    return root


def symlink_loop(root: Path) -> Path:
    """A plain dataset with a shard that is a symlink to itself."""
    dataset(root)
    (root / "train" / "loop.parquet").symlink_to(root / "train" / "loop.parquet")
    return root


def no_gpu_here() -> None:
    """``scaling.use_gpu`` cases only mean something on a machine without CUDA."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")


def duplicate_keys(tmp: Path) -> Path:
    config = tmp / "dup.yaml"
    config.write_text("name: dup\ndata:\n  synthetic: von-mises\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    return config


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
    "data-null-rows": (
        lambda t: ["data", "validate", str(null_rows(t / "d"))], {}, 2,
        "train/a.parquet: column 'x' holds null rows (100 null values in row group 0)",
    ),
    "data-null-label": (
        lambda t: ["data", "validate", str(null_label(t / "d"))], {}, 2,
        "train/a.parquet: column 'label' row 1 is null (no value)",
    ),
    "train-null-label": (
        lambda t: _train(t, "train.batch_size=100", data=null_label(t / "d")), {}, 2,
        "train/a.parquet: column 'label' row 1 is null (no value)",
    ),
    "data-label-strings": (
        lambda t: ["data", "validate", str(string_labels(t / "d"))], {}, 2,
        "train/a.parquet: column 'label' has type string",
    ),
    "data-mixed-dtypes": (
        lambda t: ["data", "validate", str(mixed_shards(t / "d"))], {}, 2,
        "train/b.parquet: column 'x' stores double values, other shards float",
    ),
    "data-manifest-shape-edited": (
        lambda t: ["data", "validate", str(made(t / "d", _set_split("train", "shape", [1, 2])))], {}, 2,
        "the manifest says (1, 2)",
    ),
    "data-manifest-files-empty": (
        lambda t: ["data", "validate", str(made(t / "d", _set_split("train", "files", [])))], {}, 2,
        "_MANIFEST.json: splits.train.files: lists no shard",
    ),
    "data-manifest-rows-lots": (
        lambda t: ["data", "validate", str(made(t / "d", _set_split("val", "rows", "lots")))], {}, 2,
        "splits.val.rows: expected a whole number of rows >= 0, got 'lots'",
    ),
    "data-missing-shard": (
        lambda t: ["data", "validate", str(missing_shard(t / "d"))], {}, 2,
        "not a readable Parquet file (No such file or directory)",
    ),
    "data-symlink-loop": (
        lambda t: ["data", "validate", str(symlink_loop(t / "d"))], {}, 2,
        "train/loop.parquet: not a readable Parquet file (Too many levels of symbolic links)",
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
    "train-null-rows": (
        lambda t: _train(t, "train.batch_size=100", data=null_rows(t / "d")), {}, 2,
        "train/a.parquet: column 'x' holds null rows (100 null values in row group 0)",
    ),
    "train-nan-values": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", value=np.nan)), {}, 2,
        "train/a.parquet: column 'x' row 200: NaN or inf",
    ),
    "train-inf-values": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", value=-np.inf)), {}, 2,
        "column 'x' row 200: NaN or inf",
    ),
    "train-huge-values": (
        lambda t: _train(t, "train.batch_size=100", data=dataset(t / "d", value=1e30)), {}, 2,
        "column 'x' row 200: value 1e+30 is too large",
    ),
    "train-label-strings": (
        lambda t: _train(t, "train.batch_size=100", data=string_labels(t / "d")), {}, 2,
        "train/a.parquet: column 'label' has type string, expected int64",
    ),
    "train-manifest-shape-edited": (
        lambda t: _train(t, "train.batch_size=100", data=made(t / "d", _set_split("train", "shape", [1, 2]))),
        {}, 2, "the manifest says (1, 2)",
    ),
    "train-manifest-files-empty": (
        lambda t: _train(t, "train.batch_size=100", data=made(t / "d", _set_split("train", "files", []))),
        {}, 2, "splits.train.files: lists no shard",
    ),
    "train-manifest-rows-lots": (
        lambda t: _train(t, "train.batch_size=100", data=made(t / "d", _set_split("train", "rows", "lots"))),
        {}, 2, "splits.train.rows: expected a whole number",
    ),
    "train-missing-shard": (
        lambda t: _train(t, "train.batch_size=100", data=missing_shard(t / "d")), {}, 2,
        "not a readable Parquet file (No such file or directory)",
    ),
    "train-symlink-loop": (
        lambda t: _train(t, "train.batch_size=100", data=symlink_loop(t / "d")), {}, 2,
        "train/loop.parquet: not a readable Parquet file (Too many levels of symbolic links)",
    ),
    "train-use-gpu-no-gpu": (
        lambda t: (no_gpu_here(), _train(t, "scaling.use_gpu=true"))[1], {}, 2,
        "scaling.use_gpu: true needs a GPU per worker (1 at least), but this machine has 0 CUDA device(s)",
    ),
    "train-registry-name-slash": (
        lambda t: _train(t, "registry.name=team/vm"), {}, 2, "registry.name: contains '/'; MLflow model names",
    ),
    "train-registry-name-colon": (lambda t: _train(t, "registry.name=vm:1"), {}, 2, "registry.name: contains ':'"),
    "train-registry-name-dot": (lambda t: _train(t, "registry.name=vm.v2"), {}, 2, "registry.name: contains '.'"),
    "train-duplicate-yaml-key": (
        lambda t: _train(t, config=duplicate_keys(t)), {}, 2, "dup.yaml:6: duplicate key 'train.lr'",
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
    "sweep-space-unknown-nested-key": (
        lambda t: _sweep(t, "tune.space={model: {choice: [{bogus: 1}]}}"), {}, 2, "model.bogus: unknown key",
    ),
    "sweep-use-gpu-no-gpu": (
        lambda t: (no_gpu_here(), _sweep(t, "scaling.use_gpu=true"))[1], {}, 2, "scaling.use_gpu: true needs",
    ),
    "sweep-registry-name-slash": (lambda t: _sweep(t, "registry.name=a/b"), {}, 2, "registry.name: contains '/'"),
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
    "submit-train-registry-name-dot": (
        lambda t: ["submit", "train", str(VM), "--address", DEAD_HTTP, "--set", "registry.name=a.b"], {}, 2,
        "registry.name: contains '.'",
    ),
    "submit-train-duplicate-yaml-key": (
        lambda t: ["submit", "train", str(duplicate_keys(t)), "--address", DEAD_HTTP], {}, 2,
        "duplicate key 'train.lr'",
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


# ------------------------------------------------------------------- every entry point, real process
# The cases above run the CLI in-process; these run ``python -m rfdist.cli`` as the user does, so a
# traceback printed by an import, a logger or an uncaught exception would show on stderr. Cheap
# cases only (nothing trains, no cluster exists): a few seconds of Python start-up each.


def _sqlite(t: Path) -> str:
    return f"sqlite:///{t / 'mlflow.db'}"


def _sets(t: Path, *sets: str) -> list[str]:
    out = ["--set", f"storage.path={t / 'runs'}", "--set", f"tracking.uri={_sqlite(t)}"]
    for item in sets:
        out += ["--set", item]
    return out


# id -> (argv from tmp_path, expected exit codes, text in the error line)
PROCESS_CASES = {
    "data-validate-null-rows": (lambda t: ["data", "validate", str(null_rows(t / "d"))], {2}, "holds null rows"),
    "data-validate-files-empty": (
        lambda t: ["data", "validate", str(made(t / "d", lambda m: m["splits"]["train"].update(files=[])))],
        {2}, "files: lists no shard",
    ),
    "train-registry-name": (lambda t: ["train", str(VM), *_sets(t, "registry.name=a/b")], {2}, "registry.name"),
    "train-duplicate-key": (lambda t: ["train", str(duplicate_keys(t)), *_sets(t)], {2}, "duplicate key"),
    "train-label-strings": (
        lambda t: ["train", str(VM), *_sets(t, f"data.path={string_labels(t / 'd')}", "data.synthetic=null",
                                              "train.batch_size=100")],
        {2}, "column 'label'",
    ),
    "sweep-space-nested-key": (
        lambda t: ["sweep", str(SWEEP), *_sets(t, "tune.space={model: {choice: [{bogus: 1}]}}")], {2},
        "model.bogus",
    ),
    "score-model-missing": (
        lambda t: ["score", "models:/nope@champion", "--data", str(made(t / "d")), "--out", str(t / "o"),
                   "--split", "val", "--tracking-uri", _sqlite(t)],
        {1, 2}, "nope",
    ),
    "eval-data-missing": (
        lambda t: ["eval", "models:/vm@latest", "--data", str(t / "nowhere"), "--tracking-uri", _sqlite(t)],
        {2}, "dataset not found",
    ),
    "models-show-missing": (lambda t: ["models", "show", "nope", "--tracking-uri", _sqlite(t)], {2}, "nope"),
    "submit-registry-name": (
        lambda t: ["submit", "train", str(VM), "--address", DEAD_HTTP, "--set", "registry.name=a.b"], {2},
        "registry.name",
    ),
    "jobs-status-unreachable": (
        lambda t: ["jobs", "status", "raysubmit_x", "--address", DEAD_HTTP], {1, 2}, "",
    ),
}  # fmt: skip


@pytest.mark.slow  # a Python process per case; the same cases run in-process in the fast tier
@pytest.mark.parametrize("case", list(PROCESS_CASES))
def test_no_traceback_in_a_real_process(case: str, tmp_path: Path) -> None:
    make_args, codes, expected = PROCESS_CASES[case]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=_sqlite(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-m", "rfdist.cli", *make_args(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr
    assert proc.returncode in codes, (proc.returncode, proc.stderr)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_s3_checkpoint_location_is_printed_with_its_scheme() -> None:
    """Ray's ``Checkpoint.path`` on S3 is ``bucket/…`` (relative to its filesystem); users see ``s3://``."""
    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from rfdist.runtime.checkpoint import checkpoint_uri

    s3 = pafs.S3FileSystem(endpoint_override=DEAD_HTTP, region="us-east-1", access_key="k", secret_key="s")
    assert checkpoint_uri(Checkpoint("bucket/runs/vm/checkpoint_1", filesystem=s3)) == (
        "s3://bucket/runs/vm/checkpoint_1"
    )
    assert checkpoint_uri(Checkpoint("/tmp/runs/vm/checkpoint_1")) == "/tmp/runs/vm/checkpoint_1"


def test_eval_and_score_help_name_the_artifact_the_model_is_logged_under() -> None:
    """The model is logged under ``registry.name`` (``model`` when unset), not always ``model``."""
    for command in ("eval", "score"):
        shown = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output.split())
        assert "runs:/ID/model" not in shown and "runs:/RUN_ID/NAME" in shown, shown
        assert "registry.name" in shown, shown

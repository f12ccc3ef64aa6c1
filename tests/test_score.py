"""`rfdist score`: Ray Data batch scoring of local and S3 datasets with a registered flow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rfdist import ModelSpec, build_model
from rfdist.data.parquet import write_dataset

from .s3_server import make_bucket, s3_server  # noqa: F401

NAME = "score-test"
ROWS = 300


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A small flow (D=2, d=1) registered as NAME in a tmp sqlite store; a local dataset beside it."""
    import mlflow

    from rfdist.tracking.models import log_flow_model

    root = tmp_path_factory.mktemp("score")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("score", artifact_location=str(root / "artifacts"))
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=2, flow_hidden=(8,), density_layers=1,
                     density_hidden=(8,))  # fmt: skip
    torch.manual_seed(5)
    model = build_model(spec).eval()
    with torch.no_grad():  # away from the (deterministic) initialisation: a fresh build must differ
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    with mlflow.start_run(experiment_id=experiment):
        log_flow_model(model, spec, registered_model_name=NAME)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 2, generator=gen).numpy().astype(np.float32)
    splits = {"train": {"x": x[:10], "label": np.arange(10)}, "test": {"x": x, "label": np.arange(ROWS)}}
    write_dataset(str(root / "data"), splits)
    return uri, model, root, splits


def _check(table, model, x: np.ndarray) -> None:
    """One row per input row, in any order; scores equal the model's own, all finite."""
    from rfdist.recipes.score import latent_matrix

    assert table.num_rows == ROWS
    order = np.argsort(table.column("label").to_numpy())
    assert (table.column("label").to_numpy()[order] == np.arange(ROWS)).all()
    log_prob = table.column("log_prob").to_numpy()[order]
    assert np.isfinite(log_prob).all() and np.isfinite(table.column("reconstruction_error").to_numpy()).all()
    with torch.no_grad():
        expected = model.log_prob(torch.from_numpy(x)).double().numpy()
        latent = model.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        table.column("log_prob_model").to_numpy()[order], expected, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(latent_matrix(table)[order], latent, atol=1e-4)


def _no_ray(monkeypatch) -> None:
    """A tripwire: starting Ray fails the test (these cases must stop before it)."""

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr("rfdist.runtime.cluster.connect_or_start_ray", tripwire)


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_score_rejects_bad_input_before_ray(registered, tmp_path, monkeypatch) -> None:
    import json

    from rfdist.cli.main import app
    from rfdist.data.parquet import MANIFEST

    _no_ray(monkeypatch)
    uri, _, root, _ = registered
    wide = tmp_path / "wide"
    write_dataset(str(wide), {"test": {"x": np.zeros((4, 3))}})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    # a truncated test shard (train intact: open_dataset reads train's footer only)
    cut = tmp_path / "cut"
    write_dataset(str(cut), {"train": {"x": np.zeros((4, 2))}, "test": {"x": np.zeros((4, 2))}})
    shard = next((cut / "test").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:-20])
    # a manifest that claims more rows than its shards hold
    lies = tmp_path / "lies"
    write_dataset(str(lies), {"test": {"x": np.zeros((4, 2))}})
    manifest = json.loads((lies / MANIFEST).read_text())
    manifest["splits"]["test"]["rows"] = 5
    (lies / MANIFEST).write_text(json.dumps(manifest))
    cases = [
        (["--data", str(wide), "--out", str(tmp_path / "o1")], "rows have 3 values, the model expects 2"),
        (["--data", str(root / "data"), "--out", str(tmp_path / "o2"), "--split", "val"], "--split val"),
        (["--data", str(root / "data"), "--out", str(tmp_path / "taken")], "has no _SUCCESS written by"),
        (
            ["--data", str(cut), "--out", str(tmp_path / "o3")],
            "test/" + shard.name + " is not a readable Parquet",
        ),
        (
            ["--data", str(lies), "--out", str(tmp_path / "o4")],
            "says split 'test' has 5 rows, its shards hold 4",
        ),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["score", f"models:/{NAME}@latest", *args, "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("o")]


def test_score_never_replaces_a_folder_it_did_not_write(registered, tmp_path, monkeypatch) -> None:
    """A Spark/Hadoop output (an empty ``_SUCCESS``), or an earlier score output with a foreign file
    added, is refused with one line and left byte for byte as it was."""
    import json

    from rfdist.cli.main import app

    _no_ray(monkeypatch)
    uri, _, root, _ = registered
    spark = tmp_path / "spark"
    (spark / "sub").mkdir(parents=True)
    (spark / "_SUCCESS").write_text("")
    (spark / "part-00000-precious.csv").write_text("a,b\n1,2\n")
    (spark / "sub" / "notes.txt").write_text("keep me")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "_SUCCESS").write_text(json.dumps({"format": "rfdist-score-v1", "files": ["a.parquet"]}))
    (ours / "a.parquet").write_bytes(b"scores")
    (ours / "notes.txt").write_text("added by the user")
    for out, message in [(spark, "has no _SUCCESS written by `rfdist score`"), (ours, "holds notes.txt")]:
        before = _tree(out)
        args = ["score", f"models:/{NAME}@latest", "--data", str(root / "data"), "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output
        assert _tree(out) == before


@pytest.mark.slow
def test_score_publishes_only_after_its_checks_and_replaces_only_its_own_output(shared_ray, tmp_path) -> None:
    """Rows scored ≠ rows expected: nothing published, the earlier output intact, no tmp folder left.
    Ray Data writes the Parquet (the real writer); 3 rows are enough to count."""
    import pyarrow as pa
    import ray.data

    from rfdist.data.errors import DataError
    from rfdist.recipes.score import _output, _write_scores, read_scores

    out = tmp_path / "scores"
    source = {"model_uri": "m", "data": "d", "split": "test", "out": str(out)}
    first = ray.data.from_arrow(pa.table({"log_prob": [1.0, 2.0, 3.0]}))
    _write_scores(_output(str(out)), first, source, ["log_prob"], 3)
    before = _tree(out)
    second = ray.data.from_arrow(pa.table({"log_prob": [7.0, 8.0]}))
    with pytest.raises(DataError, match="scored 2 rows, but split 'test' has 3"):
        _write_scores(_output(str(out)), second, source, ["log_prob"], 3)
    assert _tree(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["scores"]
    _write_scores(_output(str(out)), second, source, ["log_prob"], 2)  # its own output: replaced
    assert sorted(read_scores(str(out)).column("log_prob").to_pylist()) == [7.0, 8.0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores"]


@pytest.mark.slow
def test_score_local_and_s3_one_row_per_input(registered, s3_server, tmp_path, shared_ray) -> None:
    from rfdist.recipes.score import SUCCESS, read_scores, score_dataset

    uri, model, root, splits = registered
    out = tmp_path / "scores"
    # a real process with its own local Ray, output captured as a file (not a TTY): the
    # console holds rfdist's one line, none of Ray's, MLflow's or torch's
    result = subprocess.run(
        [sys.executable, "-m", "rfdist.cli", "score", f"models:/{NAME}@latest", "--data", str(root / "data"),
         "--out", str(out), "--tracking-uri", uri, "--batch-size", "64", "--actors", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"scored {ROWS} rows -> {out}"], result.stdout
    # Ray Data passes every pool actor its arguments through the object store, and Ray's
    # core worker prints an error line for each restartable actor created so
    # (ray-project/ray#53727); the one line rfdist cannot turn off without losing restarts
    ray_line = "has constructor arguments in the object store and max_restarts > 0"
    assert [line for line in result.stderr.splitlines() if ray_line not in line] == [], result.stderr
    assert (out / SUCCESS).is_file() and not list(tmp_path.glob("scores.tmp-*"))
    table = read_scores(str(out))
    _check(table, model, splits["test"]["x"])
    # the input has no `id`: each output row carries its position in the split as a join key
    assert table.column_names[:2] == ["row_index", "label"]
    assert (table.column("row_index").to_numpy() == table.column("label").to_numpy()).all()

    make_bucket(s3_server, "scoring")
    write_dataset("s3://scoring/vm", splits)
    scored = score_dataset(
        f"models:/{NAME}@latest", "s3://scoring/vm", "s3://scoring/out", tracking_uri=uri, batch_size=64
    )
    assert scored.rows == ROWS
    _check(read_scores("s3://scoring/out"), model, splits["test"]["x"])


def test_submit_score_job_runs_the_score_entry_point() -> None:
    from pathlib import Path

    from rfdist.recipes.submit import build_job

    root = Path(__file__).resolve().parents[1]
    spec = build_job("score", "models:/vm@champion", extra_args=["--data", "s3://b/vm", "--out", "s3://b/scores"],
                     working_dir=root, address="http://127.0.0.1:8265", environ={})  # fmt: skip
    assert spec.entrypoint == "python jobs/score.py models:/vm@champion --data s3://b/vm --out s3://b/scores"
    assert spec.runtime_env["env_vars"]["RFDIST_RAY_JOB_ID"] == spec.submission_id  # run ↔ job tag

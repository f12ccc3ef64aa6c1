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
    np.testing.assert_allclose(table.column("log_prob_model").to_numpy()[order], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(latent_matrix(table)[order], latent, atol=1e-4)


def test_score_rejects_bad_input_before_ray(registered, tmp_path) -> None:
    from rfdist.cli.main import app

    uri, _, root, _ = registered
    wide = tmp_path / "wide"
    write_dataset(str(wide), {"test": {"x": np.zeros((4, 3))}})
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    cases = [
        (["--data", str(wide), "--out", str(tmp_path / "o1")], "rows have 3 values, the model expects 2"),
        (["--data", str(root / "data"), "--out", str(tmp_path / "o2"), "--split", "val"], "--split val"),
        (["--data", str(root / "data"), "--out", str(tmp_path / "taken")], "not an `rfdist score` output"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, ["score", f"models:/{NAME}@latest", *args, "--tracking-uri", uri])
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and message in result.output, result.output
    assert not (tmp_path / "o1").exists()


@pytest.mark.slow
def test_score_local_and_s3_one_row_per_input(registered, s3_server, tmp_path) -> None:
    import ray

    from rfdist.recipes.score import SUCCESS, read_scores, score_dataset

    uri, model, root, splits = registered
    out = tmp_path / "scores"
    try:
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
    finally:
        ray.shutdown()


def test_submit_score_job_runs_the_score_entry_point() -> None:
    from pathlib import Path

    from rfdist.recipes.submit import build_job

    root = Path(__file__).resolve().parents[1]
    spec = build_job("score", "models:/vm@champion", extra_args=["--data", "s3://b/vm", "--out", "s3://b/scores"],
                     working_dir=root, address="http://127.0.0.1:8265", environ={})  # fmt: skip
    assert spec.entrypoint == "python jobs/score.py models:/vm@champion --data s3://b/vm --out s3://b/scores"
    assert spec.runtime_env["env_vars"]["RFDIST_RAY_JOB_ID"] == spec.submission_id  # run ↔ job tag

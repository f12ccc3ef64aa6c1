"""Ray Train spine: 2 CPU workers from local Parquet, MLflow run + registry, checkpoint parity."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch

from rfdist.core.builders import ModelSpec, build_model
from rfdist.data.reader import load_split, open_dataset
from rfdist.recipes.train import run_training
from rfdist.runtime.checkpoint import load_state
from rfdist.tracking.models import load_model

from .ray_training import make_data, small_config
from .s3_server import free_port, make_bucket, s3_server  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def test_two_workers_train_log_register_and_reload(tmp_path: Path) -> None:
    data = make_data(str(tmp_path / "vm"))
    cfg = small_config(tmp_path, data, "tracking.system_metrics_interval_s=1")
    result = run_training(cfg)

    assert result.metrics["step"] == 300 and result.model_version == "1"
    assert "champion" in result.aliases
    assert result.metrics["val/nll"] < 2.5  # learning happened (true entropy 1.63; init ~3.5)

    # The registered model reproduces the final checkpoint's log_prob.
    state = load_state(result.checkpoint_path)
    from_checkpoint = build_model(ModelSpec.from_dict(state.spec))
    from_checkpoint.load_state_dict(state.model)
    test = load_split(open_dataset(data), "test")[:256]
    registered = load_model(f"models:/{cfg.registry.name}@latest", tracking_uri=result.tracking_uri)
    with torch.no_grad():
        torch.testing.assert_close(registered.log_prob(test), from_checkpoint.log_prob(test))
    assert registered.sample(5).shape == (5, 2)
    # What Ray Train saw (the checkpoint's report) carries the MLflow names: one name per quantity.
    assert {"val/nll", "train/skipped_steps", "perf/s_per_step", "perf/peak_mem_mb"} <= set(state.metrics)
    assert not {k for k in state.metrics if "/" not in k} - {"step"}, sorted(state.metrics)
    assert state.metrics["val/nll"] == pytest.approx(result.metrics["val/nll"])

    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["scaling.num_workers"] == "2" and params["estimator.name"] == "exact"
    for key in (  # per-step series in the UI's namespaces (rfdist.tracking.metric_names)
        "train/loss",
        "train/log_pu",
        "train/logdet",
        "train/reconstruction",
        "val/nll",
        "perf/step_s",
        "perf/examples_per_s",
        "train/lr",
        "train/grad_norm",
        "data/wait_s",
        "train/skipped_steps",
    ):
        assert key in run.data.metrics, key
    assert "final_val_nll" in run.data.metrics  # the run's headline number stays flat
    assert "train/skipped" not in run.data.metrics  # one series per quantity: train/skipped_steps
    assert not [k for k in params if k.startswith(("tune.", "debug."))], sorted(params)
    # one key per fact: MLflow's own tags, no rfdist.* copies of them
    assert "mlflow.runName" in run.data.tags and "mlflow.source.git.commit" in run.data.tags
    assert not {"rfdist.run_name", "rfdist.git_commit"} & set(run.data.tags), sorted(run.data.tags)
    assert not {k for k in run.data.metrics if "/" not in k} - {"final_val_nll"}, sorted(run.data.metrics)
    history = client.get_metric_history(result.run_id, "val/nll")
    assert [m.step for m in history] == [50, 100, 150, 200, 250, 300]
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "plots", "checkpoint"} <= artifacts
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/model.png"}

    # System metrics of the training node (MLflow's sampler, run from the rank-0 worker).
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"):
        assert key in run.data.metrics, sorted(run.data.metrics)
    # The model's picture at every checkpoint, by step (MLflow's log_image files: KEY+step+N+…).
    images = [a.path for a in client.list_artifacts(result.run_id, "images") if a.path.endswith(".png")]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images) == [50, 100, 150, 200, 250, 300]


def test_hutchinson_and_s3_storage_with_an_mlflow_server(tmp_path: Path, s3_server: str) -> None:
    make_bucket(s3_server, "rfdist")
    data = make_data("s3://rfdist/data/vm", rows=2000)
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'srv.db'}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        uri = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.5)
        cfg = small_config(
            tmp_path,
            data,
            "train.max_steps=100",
            "estimator.name=hutchinson",
            "storage.path=s3://rfdist/runs",
            f"tracking.uri={uri}",
            name="vm-s3",
        )
        result = run_training(cfg)
        assert result.checkpoint_path.startswith("s3://rfdist/runs/vm-s3/")  # as the user writes it
        import pyarrow.fs

        fs = pyarrow.fs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http")
        listing = fs.get_file_info(pyarrow.fs.FileSelector("rfdist/runs/vm-s3", recursive=True))
        assert any(f.path.endswith("state.pt") for f in listing)
        client = mlflow.MlflowClient(uri)
        metrics = client.get_run(result.run_id).data.metrics
        assert "perf/cg_iterations" in metrics and "perf/matvecs" in metrics and "train/logdet" not in metrics
        model = load_model("models:/vm-s3@latest", tracking_uri=uri)
        assert torch.isfinite(model.log_prob(torch.tensor([[0.0, 1.0]]))).all()
    finally:
        server.terminate()
        server.wait(timeout=30)

"""Rank 0's per-step series reach MLflow under the UI's namespaces (real sqlite store)."""

from __future__ import annotations

from pathlib import Path

import mlflow

from rfdist.tracking.metric_log import MetricLogger


def test_per_step_series_are_namespaced_and_keep_their_steps(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    log = MetricLogger(uri, run_id)
    log({"loss": 1.5, "grad_norm": 0.3, "step_s": 0.02, "data_wait_s": 0.001, "cg_residual": 1e-3}, 10)
    log({"val_nll": 2.25, "auto_exact_s": 0.5}, 20)
    log.close()
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {
        "train/loss": 1.5,
        "train/grad_norm": 0.3,
        "perf/step_s": 0.02,
        "data/wait_s": 0.001,
        "perf/cg_residual": 1e-3,
        "val/nll": 2.25,
        "perf/auto_exact_s": 0.5,
    }
    assert [m.step for m in client.get_metric_history(run_id, "val/nll")] == [20]

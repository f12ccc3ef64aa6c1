"""System metrics: MLflow's sampler writes ``system/…`` into a run created with the low-level client."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow

from rfdist.runtime.system_metrics import start_monitor


def test_node_metrics_reach_the_run_only_from_local_rank_zero(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sys")).info.run_id
    assert start_monitor(run_id, uri, enabled=True, interval_s=0.5, local_rank=1) is None
    assert start_monitor(run_id, uri, enabled=False, interval_s=0.5, local_rank=0) is None
    monitor = start_monitor(run_id, uri, enabled=True, interval_s=0.5, local_rank=0, node_id="node1")
    deadline = time.monotonic() + 60
    while "system/node1/cpu_utilization_percentage" not in client.get_run(run_id).data.metrics:
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the store until the first sample is logged
    monitor.finish()
    metrics = client.get_run(run_id).data.metrics
    assert "system/node1/cpu_utilization_percentage" in metrics, sorted(metrics)
    assert metrics["system/node1/system_memory_usage_megabytes"] > 0

"""System metrics: MLflow's sampler writes ``system/…`` into a run created with the low-level client."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow

from rfdist.runtime.system_metrics import start_monitor, stop_monitor


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


def test_a_run_shorter_than_one_interval_has_a_sample_at_start_and_at_the_end(tmp_path: Path) -> None:
    # MLflow's sampler publishes its first sample one interval after start, and drops the
    # partial one at finish: a run shorter than the interval held nothing (or one 0.0 CPU reading)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("sys")).info.run_id
    monitor = start_monitor(run_id, uri, enabled=True, interval_s=600, local_rank=0)
    stop_monitor(monitor)  # what the training worker calls at the end
    memory = client.get_metric_history(run_id, "system/system_memory_usage_megabytes")
    assert [m.step for m in memory] == [0, 1], memory
    assert all(m.value > 0 for m in memory)
    assert len(client.get_metric_history(run_id, "system/cpu_utilization_percentage")) == 2

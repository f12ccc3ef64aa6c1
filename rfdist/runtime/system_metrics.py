"""System metrics (CPU, RAM, disk, network; GPU with the ``gpu`` extra) of the training node in MLflow.

Where they come from: the run is created on the driver with ``MlflowClient`` and the training
happens in Ray Train workers, possibly on other machines, so MLflow's fluent switch
(``mlflow.start_run(log_system_metrics=True)``) would sample the wrong host (the driver) and
needs an active fluent run. Instead the worker with *local rank 0* on each node runs MLflow's
own :class:`~mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor` against the
run id — the same sampler and the same ``system/…`` keys the fluent switch produces, so the
MLflow UI's *System metrics* tab shows them. One node: ``system/cpu_utilization_percentage``;
several nodes: ``system/node<N>/cpu_utilization_percentage``. GPU utilisation and memory are
added when ``nvidia-ml-py`` is installed (``pip install rfdist-flows[gpu]``).

MLflow's sampler publishes its first sample one interval after it starts and drops the partial
one when it stops, so a run shorter than an interval held no sample (or one CPU reading of 0.0,
psutil's first). :func:`start_monitor` therefore publishes one sample right away (CPU averaged
over :data:`FIRST_WINDOW_S`) and :func:`stop_monitor` one at the end.

Steps are MLflow's sample counter (continued across resumes), not training steps. Sampling
every ``tracking.system_metrics_interval_s`` seconds (``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``
wins when set); ``tracking.system_metrics: false`` turns it off. The monitor stops by itself
when the run ends or the tracking server cannot be reached (training goes on: the training
metrics have their own buffered sink, :mod:`rfdist.tracking.metric_log`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["FIRST_WINDOW_S", "start_monitor", "stop_monitor"]

FIRST_WINDOW_S = 0.5  # the first sample's CPU utilisation: the average over this window


def _sample_now(monitor: Any) -> None:
    """Collect and publish one sample now (MLflow's sampler's public steps, outside its loop)."""
    monitor.collect_metrics()
    monitor.publish_metrics(monitor.aggregate_metrics())


def start_monitor(
    run_id: str,
    tracking_uri: str,
    *,
    enabled: bool,
    interval_s: float,
    local_rank: int,
    node_id: str | None = None,
) -> Any | None:
    """Start sampling this node's system metrics into run ``run_id``; ``None`` on other workers.

    Returns the monitor (call ``finish()`` at the end of training) on the node's local rank 0.
    ``node_id`` (e.g. ``node1``, for runs over several nodes) goes into the metric keys.
    """
    if not enabled or local_rank != 0:
        return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # psutil missing: nothing to sample with
        return None
    # MLflow announces start/stop and a missing GPU library at INFO: noise on the console
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    try:
        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=interval_s,
            resume_logging=True,  # a resumed run continues the sample steps (one get_run)
            node_id=node_id,
            tracking_uri=tracking_uri,
        )
        monitor.collect_metrics()  # primes psutil: its first CPU reading is always 0.0
        for part in monitor.monitors:
            part.clear_metrics()
        time.sleep(FIRST_WINDOW_S)  # a measurement window, not a wait for a condition
        _sample_now(monitor)
        monitor.start()
    except Exception as exc:  # system metrics must never stop training (e.g. server down at start)
        from rfdist.runtime.console import worker_print

        worker_print(
            f"[rfdist] warning: no system metrics for this run ({type(exc).__name__}: {exc})", flush=True
        )
        return None
    return monitor


def stop_monitor(monitor: Any | None) -> None:
    """Stop ``monitor`` (from :func:`start_monitor`) and publish a last sample, so the end of the run shows."""
    if monitor is None:
        return
    monitor.finish()  # joins MLflow's sampling thread: the sample below does not race it
    try:
        _sample_now(monitor)
        monitor.mlflow_logger.flush()
    except Exception:  # the tracking server went away: training's result matters, not this sample
        logging.getLogger(__name__).debug("no last system-metrics sample", exc_info=True)

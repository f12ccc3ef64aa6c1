"""Rank 0's MLflow sink: training never waits on, or dies with, the tracking server.

Metrics, tags and images go into a buffer that a background thread sends (``log_batch``, ≤ 1000 metrics
a call); while the server answers, a log call returns once its metrics are sent (≤ 5 s). When the server cannot be reached the thread keeps the buffer and retries with
backoff (1 s doubling to 30 s) while training goes on; once the server is back, everything
buffered is sent in order, so a 30 s outage leaves no gap in the run's metrics. One line says
when the server went away and one when it came back. :meth:`MetricLogger.close` (end of
training) waits for the buffer to drain, bounded by ``flush_timeout_s``, then names what it
could not send.

Each send is one HTTP attempt with a short timeout (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``,
``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` unless set): MLflow's own retries would block for minutes.
These are process-wide settings, which is why rank 0 sends everything through this logger.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

from rfdist.tracking.metric_names import mlflow_key

__all__ = ["MetricLogger"]

BATCH = 1000  # MLflow's log_batch limit on metrics per call
SYNC_WAIT_S = 5.0  # the longest a log call waits for its metrics to be sent


class MetricLogger:
    """``log(metrics, step)`` / ``tag(key, value)`` / ``image(key, image, step)`` now, sent to run ``run_id`` later."""

    def __init__(
        self,
        tracking_uri: str,
        run_id: str,
        *,
        max_backoff_s: float = 30.0,
        flush_timeout_s: float = 120.0,
    ) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._run_id = run_id
        self._metrics: list[Any] = []
        self._tags: list[tuple[str, str]] = []
        self._images: list[tuple[str, Any, int, int]] = []
        self._lock = threading.Condition()
        self._closed = False
        self._queued = self._sent = 0  # metric values ever queued / sent
        self._down = False
        self._max_backoff = max_backoff_s
        self._flush_timeout = flush_timeout_s
        self._thread = threading.Thread(target=self._send_loop, name="rfdist-metrics", daemon=True)
        self._thread.start()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        self.log(metrics, step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Queue ``metrics`` at ``step`` under their namespaced keys (:func:`~rfdist.tracking.metric_names.mlflow_key`)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(mlflow_key(k), float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))
        ]
        with self._lock:
            self._metrics.extend(batch)
            self._queued += len(batch)
            target = self._queued
            self._lock.notify_all()
            # while the server answers, behave synchronously (a worker stopped right after this
            # call loses nothing); while it is down, return at once
            self._lock.wait_for(lambda: self._sent >= target or self._down, timeout=SYNC_WAIT_S)

    def tag(self, key: str, value: str) -> None:
        with self._lock:
            self._tags.append((key, value))
            self._lock.notify_all()

    def image(self, key: str, image: Any, step: int) -> None:
        """Queue a PIL image for ``MlflowClient.log_image(key=…, step=…)`` (the UI's per-step images)."""
        with self._lock:
            self._images.append((key, image, step, int(time.time() * 1000)))
            self._lock.notify_all()

    def _send_loop(self) -> None:
        backoff, down_since = 1.0, None
        while True:
            with self._lock:
                while not (self._metrics or self._tags or self._images or self._closed):
                    self._lock.wait()
                if not (self._metrics or self._tags or self._images):
                    return  # closed and drained
                metrics, tags = self._metrics[:BATCH], list(self._tags)
                images = [] if (metrics or tags) else self._images[:1]  # one image when the rest is sent
            try:
                for key, value in tags:
                    self._client.set_tag(self._run_id, key, value)
                if metrics:
                    self._client.log_batch(self._run_id, metrics=metrics, synchronous=True)
                for key, image, step, stamp in images:
                    self._client.log_image(
                        self._run_id, image, key=key, step=step, timestamp=stamp, synchronous=True
                    )
            except Exception as exc:  # the server is down or failing: keep everything, retry
                if down_since is None:
                    down_since = time.monotonic()
                    with self._lock:
                        self._down = True
                        self._lock.notify_all()
                    print(
                        f"[rfdist] tracking server unreachable ({type(exc).__name__}); training "
                        "goes on, metrics are buffered and retried",
                        flush=True,
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            with self._lock:
                del self._metrics[: len(metrics)]
                del self._tags[: len(tags)]
                del self._images[: len(images)]
                self._sent += len(metrics)
                self._down = False
                self._lock.notify_all()
                pending = len(self._metrics)
            if down_since is not None:
                print(
                    f"[rfdist] tracking server back after {time.monotonic() - down_since:.0f} s; "
                    f"buffered metrics sent ({pending} still queued)",
                    flush=True,
                )
            backoff, down_since = 1.0, None

    def close(self) -> None:
        """Send what is buffered (waits up to ``flush_timeout_s``), then stop the thread."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(self._flush_timeout)
        if self._thread.is_alive():
            with self._lock:
                lost = len(self._metrics)
            print(
                f"[rfdist] warning: tracking server still unreachable after "
                f"{self._flush_timeout:.0f} s; {lost} metric values were not logged",
                flush=True,
            )

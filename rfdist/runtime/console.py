"""What rfdist prints on the console: each progress line once, and where to look at a run.

Ray Train (V2) patches ``print`` in its workers to log through the root logger *and*, when
Ray has wrapped ``sys.stdout``, to tee to the real print as well; with ``log_to_driver`` both
copies reach the driver, so every ``[rfdist] step …`` line appeared twice.
:func:`worker_print` writes to the process's own stdout (``sys.__stdout__``), which the
patch passes straight to the builtin print: one copy, streamed to the driver by Ray.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from rfdist.runtime.ray_internals import apply_ray_data_logging, train_report_logger

__all__ = ["RayDataConsoleFilter", "quiet_ray_data", "quiet_train_reports", "start_hints", "worker_print"]

RAY_DATA_LOGGING = os.path.join(os.path.dirname(__file__), "ray_data_logging.yaml")


class RayDataConsoleFilter:
    """Drops Ray Data's console notice that progress bars are off (rfdist turns them off)."""

    def filter(self, record: Any) -> bool:
        return not str(record.getMessage()).startswith("Progress bars disabled")


def quiet_ray_data() -> None:
    """Ray Data's console at WARNING, in this process and the Ray it starts (unless the user set
    ``RAY_DATA_LOGGING_CONFIG``): its per-read INFO lines (encoding-ratio estimates, "execution
    finished") go to ``ray-data.log`` in the Ray session's logs instead of the console. Ray's
    processes also skip DeprecationWarnings about Ray's own internals (unless
    ``PYTHONWARNINGS`` is set).

    Only for a Ray started here: the variable is a path, which a remote cluster's nodes lack.
    """
    # Ray's own processes warn about Ray's own deprecated calls (Ray Train's DatasetManager passes
    # ExecutionOptions.exclude_resources): nothing a user can act on; a user's setting wins
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    if "RAY_DATA_LOGGING_CONFIG" in os.environ or not os.path.exists(RAY_DATA_LOGGING):
        return
    os.environ["RAY_DATA_LOGGING_CONFIG"] = RAY_DATA_LOGGING  # inherited by the local Ray's workers
    if "ray.data" in sys.modules:  # already configured at import: apply now
        apply_ray_data_logging()


def worker_print(*objects: Any, **kwargs: Any) -> None:
    """``print`` for code that runs in Ray Train workers: one line on the driver, not two."""
    import builtins

    if kwargs.get("file") is None:
        kwargs["file"] = sys.__stdout__ or sys.stdout
    builtins.print(*objects, **kwargs)


def quiet_train_reports() -> None:
    """In a Ray Train worker: no "Reporting training result N: TrainingReport(…)" INFO line per
    checkpoint on the console (Ray logs it under a logger named by its file path, outside the
    ``ray.train`` logger that ``LoggingConfig`` sets; rfdist prints each checkpoint's step and
    val NLL itself)."""
    import logging

    logger = train_report_logger()
    if logger is not None:  # None: another Ray layout, Ray's lines are kept rather than fail
        logger.setLevel(logging.WARNING)


def start_hints(tracking_uri: str, dashboard_url: str | None = None) -> list[str]:
    """Lines telling the user how to open the MLflow UI and the Ray dashboard (with its token)."""
    from rfdist.tracking.models import redact_uri

    lines = []
    if tracking_uri.startswith("sqlite:"):
        # one worker: MLflow's default 4 uvicorn workers did not answer /health for minutes on a loaded machine
        lines.append(
            f"[rfdist] MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --workers 1"
        )
    elif tracking_uri.startswith(("http://", "https://")):
        lines.append(f"[rfdist] MLflow UI: {redact_uri(tracking_uri)}")
    if dashboard_url:
        line = f"[rfdist] Ray dashboard: {dashboard_url}"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            line += " (token auth: the token is $RAY_AUTH_TOKEN or the file ~/.ray/auth_token)"
        lines.append(line)
    return lines

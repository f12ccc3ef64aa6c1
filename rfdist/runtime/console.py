"""What rfdist prints on the console: each progress line once, and where to look at a run.

Ray Train (V2) patches ``print`` in its workers to log through the root logger *and*, when
Ray has wrapped ``sys.stdout``, to tee to the real print as well; with ``log_to_driver`` both
copies reach the driver, so every ``[rfdist] step …`` line appeared twice.
:func:`worker_print` writes to the process's own stdout (``sys.__stdout__``), which the
patch passes straight to the builtin print: one copy, streamed to the driver by Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from rfdist.runtime.ray_internals import apply_ray_data_logging, train_report_logger

__all__ = [
    "JOB_CONSOLE_ENV",
    "JOB_WORKER_SETUP_HOOK",
    "RayDataConsoleFilter",
    "quiet_driver",
    "quiet_job_worker",
    "quiet_ray_data",
    "quiet_train_reports",
    "quiet_tune",
    "start_hints",
    "worker_print",
]

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


JOB_CONSOLE_ENV = {
    # a job's output is a log file: no Ray Data progress bars (cursor escapes and blank lines
    # in it), no colour codes around the "(RayTrainWorker pid=…)" prefixes
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "RAY_COLOR_PREFIX": "0",
    # Ray's processes warn about Ray's own deprecated calls: nothing a user can act on
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # Ray's "[repeated 2x across cluster]" notice carries colour codes
    "RAY_DEDUP_LOGS": "0",
}
"""Environment of every process of a submitted job (driver and workers) for a quiet log."""

JOB_WORKER_SETUP_HOOK = "rfdist.runtime.console.quiet_job_worker"
"""A job's ``worker_process_setup_hook``: run by every worker process of the job as it starts."""


def quiet_job_worker() -> None:
    """In each worker process of a submitted job: Ray Data's console at WARNING (as
    :func:`quiet_ray_data` does for a local Ray), its INFO lines in ``ray-data.log``. The config
    file's path is this process's own copy of rfdist, so it exists on every node."""
    quiet_ray_data()


def quiet_driver() -> None:
    """This process's console, whichever Ray it joins: colours only on a terminal, no Ray Data
    progress bars unless stderr is a terminal, and the INFO lines of the MLflow database
    (created or migrated on first use) and of model registration in their loggers only."""

    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read each time Ray prints a worker line
    if not sys.stderr.isatty():
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        if "ray.data" in sys.modules:  # the default was read at import
            from ray.data import DataContext

            DataContext.get_current().enable_progress_bars = False
    quiet_ray_data()  # this process's Ray Data (a score driver runs its executor here)
    # MLflow's INFO lines (database created, experiment created, "View run at") say what rfdist
    # says itself; its warnings stay
    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """A sweep's console while Ray Tune runs: rfdist's lines and the trials', not Tune's.

    Ray 2.60's default ("new") output engine prints its experiment box, "View detailed results
    here" and a TensorBoard command even at ``verbose=0`` (tracking is in MLflow); its legacy
    engine (``RAY_AIR_NEW_OUTPUT=0``, a user's setting wins) is silent at ``verbose=0``. Tune's
    warnings on Ctrl-C ("Stop signal received", "Resume experiment with: Tuner.restore(…)") name
    an API, not the command that resumes the sweep, which rfdist prints itself: they go to the
    ``ray.tune.tune`` logger at ERROR. Both are restored afterwards.
    """
    previous_env = os.environ.get("RAY_AIR_NEW_OUTPUT")
    logger = logging.getLogger("ray.tune.tune")
    previous_level = logger.level
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous_level)
        if previous_env is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)


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

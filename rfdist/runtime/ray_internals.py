"""The Ray internals rfdist relies on, one function each, where no public Ray API does the job.

Each docstring names the internal and why nothing public serves. ``tests/test_ray_internals.py``
checks that every one still exists and behaves as assumed, so a Ray upgrade that moves or changes
one fails that test by name instead of silently changing what rfdist does. Nothing here imports
Ray at module import: callers decide when Ray is loaded.
"""

from __future__ import annotations

import logging
import sys

__all__ = [
    "AUTH_SETUP_LOGGER",
    "CLUSTER_CONSTANTS_MODULE",
    "apply_ray_data_logging",
    "auth_setup_logger",
    "keep_loaded_ray_single_machine",
    "refresh_ray_config",
    "train_report_logger",
]

AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
CLUSTER_CONSTANTS_MODULE = "ray._private.ray_constants"


def auth_setup_logger() -> logging.Logger:
    """The logger of Ray's token-auth setup, which warns on every local ``ray.init()`` that token
    auth is on and how to turn it off.

    Relies on: the logger is named after its module, ``ray._private.authentication.
    authentication_token_setup`` (``logging.getLogger(__name__)``). No public API: Ray exposes no
    switch for that warning, and only a filter on this logger drops it without hiding the rest.
    """
    return logging.getLogger(AUTH_SETUP_LOGGER)


def keep_loaded_ray_single_machine() -> None:
    """Tell an already imported Ray to keep its node on 127.0.0.1 (single-machine mode).

    Relies on: ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, read from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once at import and consulted by
    ``ray._private.services.get_node_ip_address`` when Ray picks the node IP. No public API: the
    environment variable is the documented switch, but a Ray imported before it was set has
    cached it; only the constant reaches that Ray. A Ray not yet imported is left alone (it reads
    the variable itself).
    """
    constants = sys.modules.get(CLUSTER_CONSTANTS_MODULE)
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def apply_ray_data_logging() -> None:
    """Re-apply Ray Data's logging config (the ``RAY_DATA_LOGGING_CONFIG`` file) in this process.

    Relies on: ``ray.data._internal.logging.configure_logging``, which Ray Data runs once when
    ``ray.data`` is imported and which reads ``RAY_DATA_LOGGING_CONFIG`` then. No public API:
    the variable is Ray Data's documented way to configure its logging, but nothing public
    applies it again to a ``ray.data`` already imported.
    """
    from ray.data._internal.logging import configure_logging

    configure_logging()


def train_report_logger() -> logging.Logger | None:
    """The logger Ray Train (V2) writes "Reporting training result N: TrainingReport(…)" to in a
    worker, or ``None`` when this Ray has no such module (then its lines are kept, nothing fails).

    Relies on: ``ray.train.v2._internal.execution.context`` logging through
    ``logging.getLogger(__file__)``, a logger named by its file path, outside the ``ray.train``
    logger. No public API: ``ray.train.LoggingConfig`` sets the level of ``ray.train`` only.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return None
    return logging.getLogger(context.__file__)


def refresh_ray_config() -> None:
    """Make this process's Ray re-read its settings from the environment (``RAY_AUTH_MODE``).

    Relies on: ``ray._raylet.Config.initialize("")``, which rebuilds the cached RayConfig from
    ``RAY_*`` variables (Ray itself calls it after setting ``RAY_AUTH_MODE=token``). No public
    API: Ray reads ``RAY_AUTH_MODE`` once into RayConfig, and the Jobs client's token header
    follows that cached mode, so a mode set after ``import ray`` needs the refresh.
    """
    from ray._raylet import Config

    Config.initialize("")

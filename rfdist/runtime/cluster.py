"""Connecting to Ray: join a cluster, or start a private local instance with secure defaults.

A local instance rfdist starts itself listens on loopback only and uses a private token, both
decided before ``ray.init`` (joining a cluster with ``--address``/``RAY_ADDRESS`` is left to
that cluster's settings).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from rfdist.runtime.ray_internals import auth_setup_logger, keep_loaded_ray_single_machine

if TYPE_CHECKING:
    from rfdist.config import RunConfig

__all__ = [
    "connect_or_start_ray",
    "dashboard_url",
    "init_ray",
    "loopback_only",
    "private_token",
    "start_local_ray",
]

CLUSTER_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_only() -> None:
    """Keep a local Ray instance's servers on 127.0.0.1 unless the user opts out.

    Ray maps a loopback node address to the machine's external IP, so GCS, raylet and the
    agents of a plain ``ray.init()`` listen on every interface; its single-machine mode
    (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS/Windows) keeps them on
    127.0.0.1. A local Ray uses it unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` is set (to let
    other machines join it).

    The variable goes into ``os.environ`` (for Ray's child processes and a later import); a Ray
    already imported has read it, so it is told too
    (:func:`~rfdist.runtime.ray_internals.keep_loaded_ray_single_machine`).
    """
    if os.environ.get(CLUSTER_ENV, "").lower() in ("1", "true"):
        return
    os.environ[CLUSTER_ENV] = "0"
    keep_loaded_ray_single_machine()


def _tighten(path: Path) -> None:
    """Mode 600 for a token file of ours that others could read (the token is not changed)."""
    info = path.stat()
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.getuid():
        path.chmod(0o600)
        print(f"[rfdist] {path}: Ray's token file was readable by others; now mode 600", flush=True)


class _NoOptOutAdvice(logging.Filter):
    """Drops Ray's per-run notice that token auth is on and how to turn it off."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "RAY_AUTH_MODE=disabled" not in record.getMessage()


_QUIET = _NoOptOutAdvice()


def private_token() -> None:
    """Token auth on for a local Ray, with a token file only its owner can read.

    With ``RAY_AUTH_MODE`` unset, ``ray.init()`` turns token auth on for a new local instance,
    writes ``~/.ray/auth_token`` with the default umask when there is none (0644: every local
    user can read the token and drive the instance), and on every run warns, suggesting
    ``RAY_AUTH_MODE=disabled``. Here the token file (``RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``) is created first with mode 600 (an existing one of ours is tightened
    to 600; its token is kept) and that warning is filtered out of Ray's log. Ray still turns
    token auth on itself: setting ``RAY_AUTH_MODE`` here would not reach a Ray already imported
    in this process (its config is cached). A ``RAY_AUTH_MODE`` or ``RAY_AUTH_TOKEN`` the user
    set is respected as is (no file is written then).
    """
    auth_setup_logger().addFilter(_QUIET)  # idempotent
    if "RAY_AUTH_MODE" in os.environ or os.environ.get("RAY_AUTH_TOKEN"):
        return
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.is_file() and path.stat().st_size > 0:
        _tighten(path)
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))  # Ray's own format: 256 random bits, hex
    path.chmod(0o600)  # O_CREAT's mode applies to new files only


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_ray(num_cpus: int) -> None:
    """Start a local Ray with ``num_cpus`` logical CPUs, its dashboard on 127.0.0.1.

    Every process of this instance gets ``RAY_API_SERVER_ADDRESS`` (its own dashboard):
    Ray Train's placement-group cleaner otherwise auto-detects the cluster by scanning the
    machine's processes and fails when a second Ray instance runs there (another test, a
    ``ray start`` head), leaving the placement groups of stopped trials behind.
    """
    import ray

    from rfdist.runtime.console import quiet_ray_data

    loopback_only()
    private_token()
    quiet_ray_data()
    # Ray Train's PreemptionWatcher polls for draining nodes, which a private one-node instance
    # never has; its actor printed a core_worker "constructor arguments in the object store" error
    # line (ray-project/ray#53727) on some runs, which nobody can act on. A user's setting wins.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    dashboard_port = _free_port()
    ray.init(
        # "local": a new private instance even when a `ray start` head runs on this machine
        # (a plain ray.init() would join it through /tmp/ray/ray_current_cluster and then
        # refuse num_cpus)
        address="local",
        num_cpus=num_cpus,
        object_store_memory=768 * 1024**2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}},
        log_to_driver=True,
        logging_level="WARNING",
    )
    os.environ["RFDIST_DASHBOARD_URL"] = f"http://127.0.0.1:{dashboard_port}"  # for the start-up hint
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def connect_or_start_ray(address: str | None, local_cpus: int) -> None:
    """Join ``address`` (else ``RAY_ADDRESS``) or start a local Ray with ``local_cpus`` logical CPUs."""
    import ray

    from rfdist.runtime.console import quiet_driver

    if ray.is_initialized():
        return
    quiet_driver()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Ray's INFO lines ("Connecting to existing Ray cluster…") stay out of the console
        ray.init(address=address, log_to_driver=True, logging_level="WARNING")
        return
    start_local_ray(local_cpus)


def dashboard_url() -> str | None:
    """The Ray dashboard URL: the local instance's (set by start_local_ray), else an http(s) ``RAY_ADDRESS``."""
    url = os.environ.get("RFDIST_DASHBOARD_URL") or os.environ.get("RAY_ADDRESS", "")
    return url if url.startswith(("http://", "https://")) else None


def init_ray(cfg: RunConfig, address: str | None) -> None:
    """Join ``address`` or start a local Ray sized for one training run of ``cfg``."""
    workers_cpu = cfg.scaling.max_workers * cfg.scaling.cpus_per_worker
    # Logical CPUs: room for every worker, the train controller and Ray Data's read tasks
    # (on 2 physical cores an exact budget starves Ray Data and hangs silently).
    connect_or_start_ray(address, max(4, math.ceil(workers_cpu) + 2))

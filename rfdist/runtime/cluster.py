"""Connecting to Ray: join a cluster, or start a private local instance with secure defaults.

A local instance rfdist starts itself listens on loopback only and uses a private token, both
decided before ``ray.init`` (joining a cluster with ``--address``/``RAY_ADDRESS`` is left to
that cluster's settings).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rfdist.runtime.ray_internals import auth_setup_logger, keep_loaded_ray_single_machine

if TYPE_CHECKING:
    from rfdist.config import RunConfig

__all__ = [
    "RayStartError",
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


class RayStartError(RuntimeError):
    """A local Ray instance did not come up (one line saying what to do)."""


@contextlib.contextmanager
def _workers_find_this_instance() -> Iterator[None]:
    """While ``ray.init`` starts a private instance: its processes learn its address at birth.

    Ray Train's placement-group cleaner (a detached actor) asks the state API whether the
    controller lives; without an address that API finds "the" cluster by scanning the machine's
    processes and fails when a second Ray instance runs there (another test, a ``ray start``
    head), leaving the placement groups of stopped trials behind. So the GCS port is chosen
    here and ``RAY_ADDRESS`` names it in the environment the raylet inherits, and with it every
    worker process. A ``RAY_API_SERVER_ADDRESS`` inherited from the shell
    (``cluster/local-head.sh env``) names another cluster, whose answer ("no such controller")
    would make the cleaner remove a live run's placement group: it is withheld. This process's
    own environment is restored afterwards. (A job-level ``worker_process_setup_hook`` did this
    before; any job runtime_env makes each worker start through Ray's runtime-env setup: +0.7
    CPU-s per actor, ~7 actors per Ray Train run, measured on 2 cores.)
    """
    keys = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_GCS_SERVER_PORT")
    saved = {key: os.environ.get(key) for key in keys}
    with socket.socket() as probe:  # a free port; the GCS binds it a moment later
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.pop("RAY_API_SERVER_ADDRESS", None)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _startup_error(exc: Exception) -> RayStartError | None:
    """A one-line :class:`RayStartError` for Ray's start-up timeouts and port clashes, else ``None``."""
    text = str(exc)
    if "timed out during startup" in text:
        return RayStartError(
            "Ray did not start: the local node timed out during startup (the machine is overloaded "
            "or short of memory); retry when it is less busy, or join a running cluster with --address"
        )
    if "dashboard" in text.lower() and ("port" in text.lower() or "address already in use" in text.lower()):
        return RayStartError(
            f"Ray did not start: its dashboard could not bind a port ({text.splitlines()[0]})"
        )
    return None


#: How often Ray Train's controller polls the workers of a private local Ray (seconds).
LOCAL_POLL_INTERVAL_S = "0.5"


def start_local_ray(num_cpus: int) -> None:
    """Start a local Ray with ``num_cpus`` logical CPUs, its dashboard on 127.0.0.1.

    Ray chooses the dashboard port (8265, else the next free one: it binds it itself, so no
    other process can take it in between); the URL is read back from ``ray.init``. Every worker
    process knows its address (:func:`_workers_find_this_instance`). A start-up failure Ray explains only with a
    traceback (its node timing out under load) becomes :class:`RayStartError`.
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
    # Ray Train's controller polls its workers every 2 s by default, and a run's reports, its
    # checkpoints and its end wait for the next poll; on a private one-machine instance a poll is
    # a local call, so poll every 0.5 s (measured: a 20-step 2-worker fit ~20% shorter on 2 cores).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", LOCAL_POLL_INTERVAL_S)
    try:
        with _workers_find_this_instance():
            context = ray.init(
                # "local": a new private instance even when a `ray start` head runs on this machine
                # (a plain ray.init() would join it through /tmp/ray/ray_current_cluster and then
                # refuse num_cpus)
                address="local",
                num_cpus=num_cpus,
                object_store_memory=768 * 1024**2,
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                log_to_driver=True,
                logging_level="WARNING",
            )
    except Exception as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        raise error from None
    url = context.dashboard_url or ""
    if url:  # for the start-up hint
        os.environ["RFDIST_DASHBOARD_URL"] = url if "://" in url else f"http://{url}"
    from ray.data import DataContext

    data_context = DataContext.get_current()
    data_context.enable_progress_bars = False
    data_context.print_on_execution_start = False


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
    check_cluster_gpus(cfg)


def check_cluster_gpus(cfg: RunConfig) -> None:
    """With ``scaling.use_gpu``, one warning line when the joined Ray has fewer GPUs than workers.

    A local Ray was checked before it started (``rfdist.recipes.preflight.check_devices``); a
    cluster may still add GPU nodes (an autoscaler), so this warns rather than refuses.
    """
    import ray

    if not cfg.scaling.use_gpu:
        return
    gpus = float(ray.cluster_resources().get("GPU", 0))
    needed = cfg.scaling.min_workers * (cfg.scaling.gpus_per_worker or 1.0)
    if gpus < needed:
        print(
            f"[rfdist] warning: scaling.use_gpu asks for {needed:g} GPU(s) ({cfg.scaling.min_workers} worker(s)) but the "
            f"Ray cluster has {gpus:g} GPU(s) now; the workers wait for GPU nodes (an autoscaler) or time out",
            flush=True,
        )

"""Secure defaults for the local Ray instance rfdist starts: loopback only, a private token.

Both are decided before ``ray.init`` and only for an instance rfdist starts itself (joining a
cluster with ``--address``/``RAY_ADDRESS`` is left to that cluster's settings).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from rfdist.runtime.ray_internals import auth_setup_logger, keep_loaded_ray_single_machine

__all__ = ["loopback_only", "private_token"]

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

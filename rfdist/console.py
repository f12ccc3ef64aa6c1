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

__all__ = ["start_hints", "worker_print"]


def worker_print(*objects: Any, **kwargs: Any) -> None:
    """``print`` for code that runs in Ray Train workers: one line on the driver, not two."""
    import builtins

    if kwargs.get("file") is None:
        kwargs["file"] = sys.__stdout__ or sys.stdout
    builtins.print(*objects, **kwargs)


def start_hints(tracking_uri: str, dashboard_url: str | None = None) -> list[str]:
    """Lines telling the user how to open the MLflow UI and the Ray dashboard (with its token)."""
    from .tracking import redact_uri

    lines = []
    if tracking_uri.startswith("sqlite:"):
        lines.append(f"[rfdist] MLflow UI: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1")
    elif tracking_uri.startswith(("http://", "https://")):
        lines.append(f"[rfdist] MLflow UI: {redact_uri(tracking_uri)}")
    if dashboard_url:
        line = f"[rfdist] Ray dashboard: {dashboard_url}"
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
            line += " (token auth: the token is $RAY_AUTH_TOKEN or the file ~/.ray/auth_token)"
        lines.append(line)
    return lines

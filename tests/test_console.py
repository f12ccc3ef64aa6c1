"""Console: progress lines from Ray Train workers reach the console once; --version."""

from __future__ import annotations

import builtins
import io
import logging
import sys

from typer.testing import CliRunner


def _copies(text: str, out: str, wrapped: io.StringIO, records: list[logging.LogRecord]) -> int:
    return out.count(text) + wrapped.getvalue().count(text) + sum(text in r.getMessage() for r in records)


def test_worker_print_emits_one_copy_under_ray_trains_print_patch(capfd) -> None:
    """Ray Train V2 patches print in workers (logger + tee when stdout is wrapped): two copies."""
    from ray.train.v2._internal.logging.patch_print import redirected_print  # what workers run

    from rfdist.runtime.console import worker_print

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    saved_print, saved_stdout = builtins.print, sys.stdout
    wrapped = io.StringIO()  # Ray wraps a worker's sys.stdout
    try:
        builtins.print = redirected_print
        sys.stdout = wrapped
        worker_print("[rfdist] step 100/100", flush=True)
        builtins.print("[rfdist] plain print", flush=True)
    finally:
        builtins.print, sys.stdout = saved_print, saved_stdout
        root.removeHandler(handler)
        root.setLevel(level)
    out = capfd.readouterr().out
    assert _copies("[rfdist] step 100/100", out, wrapped, records) == 1
    assert _copies("[rfdist] plain print", out, wrapped, records) == 2  # the duplication it avoids


def test_version_flag() -> None:
    from rfdist.cli.main import app
    from rfdist.tracking.models import DIST_NAME

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("rfdist ") and DIST_NAME in result.output

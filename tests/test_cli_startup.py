"""The CLI answers --help, --version and shell completion without importing torch, Ray or MLflow.

Each check is a fresh ``python -m rfdist.cli`` process (imports are per process) that prints the
heavy modules it ended up with; wall-clock time is measured by ``bench/cli_startup.py``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "mlflow", "pyarrow", "pandas", "sklearn", "matplotlib")
# Runs the CLI in-process, then reports which heavy modules it imported (also when it exits).
PROBE = f"""
import atexit, json, sys
atexit.register(lambda: print("HEAVY=" + json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr))
sys.argv = ["rfdist", *json.loads(sys.argv[1])]
from rfdist.cli import main
main()
"""


def _heavy_imports(args: list[str], env: dict[str, str] | None = None) -> tuple[list[str], str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args)],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )  # fmt: skip
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY="))
    return json.loads(line.removeprefix("HEAVY=")), proc.stdout


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["train", "--help"], ["jobs", "--help"], ["models", "show", "--help"],
     ["presets", "list"]],
    ids=" ".join,
)  # fmt: skip
def test_help_and_version_import_no_heavy_module(args: list[str]) -> None:
    heavy, out = _heavy_imports(args)
    assert out.strip(), "the command printed nothing"
    assert heavy == [], f"`rfdist {' '.join(args)}` imported {heavy}"


def test_shell_completion_imports_no_heavy_module() -> None:
    # what a Tab press runs: click's completion protocol (bash), completing `rfdist tr`
    env = {"_RFDIST_COMPLETE": "complete_bash", "COMP_WORDS": "rfdist tr", "COMP_CWORD": "1"}
    heavy, out = _heavy_imports([], env)
    assert "train" in out
    assert heavy == []

"""The local Ray instance rfdist starts uses a private token file (0600) and says nothing about it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import ray  # imported first, as a notebook or a test would
from rfdist.runtime.cluster import start_local_ray
start_local_ray(4)
assert ray.get(ray.remote(lambda: 41 + 1).remote()) == 42
ray.shutdown()
print("PROBE OK")
"""


def _run(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RFDIST_"))}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=240, cwd=home
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("existing", [None, 0o644], ids=["no-token", "loose-token"])
def test_local_ray_token_is_private_and_quiet(tmp_path: Path, existing: int | None) -> None:
    token = tmp_path / ".ray" / "auth_token"
    if existing is not None:
        token.parent.mkdir()
        token.write_text("a" * 64)
        token.chmod(existing)
    done = _run(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "PROBE OK" in done.stdout, output[-3000:]
    assert token.is_file() and _mode(token) == 0o600, oct(_mode(token))
    assert _mode(token.parent) & 0o077 == 0 or existing is not None
    if existing is not None:
        assert token.read_text() == "a" * 64  # the user's token is kept, only its mode tightened
    assert "RAY_AUTH_MODE=disabled" not in output and "opt out" not in output, output[-3000:]
    assert "Token authentication is" not in output, output[-3000:]

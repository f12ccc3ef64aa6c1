"""The local Ray instance ``rfdist train`` starts listens on loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os
from rfdist.config import load_config
from rfdist.train import _init_ray
import ray, psutil
_init_ray(load_config(None, ["scaling.num_workers=1"]), None)
ray.get(ray.remote(lambda: 1).remote())  # a worker is up too
listening = []
for proc in psutil.Process().children(recursive=True):
    try:
        listening += [[proc.name(), c.laddr.ip, c.laddr.port] for c in proc.net_connections("inet")
                      if c.status == "LISTEN"]
    except psutil.Error:
        pass
print("LISTENING " + json.dumps(listening))
ray.shutdown()
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_rfdist_local_ray_binds_loopback_only() -> None:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("RAY_", "RFDIST_"))}
    # No RAY_* variable: loopback is rfdist's default (see rfdist.train._loopback_only).
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=280, cwd=ROOT
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("LISTENING ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    listening = json.loads(lines[-1][len("LISTENING ") :])
    assert len(listening) >= 3  # GCS, raylet, dashboard at least
    exposed = [item for item in listening if item[1] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert not exposed, f"non-loopback listeners: {exposed}"

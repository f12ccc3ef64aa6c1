"""`rfdist train` without ``--address`` starts its private Ray even when this machine has a
``ray start`` head (whose address Ray records in ``<tmp>/ray/ray_current_cluster``): a plain
``ray.init()`` would join that head and then refuse ``num_cpus``."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import ray
from rfdist.runtime.cluster import connect_or_start_ray
connect_or_start_ray(None, 1)
print("cpus", ray.cluster_resources()["CPU"])
ray.shutdown()
"""


def test_private_ray_starts_although_a_head_is_recorded_on_this_machine() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="rt") as tmp:  # short: Ray's socket paths
        (Path(tmp) / "ray").mkdir()
        (Path(tmp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")  # what `ray start` leaves
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
        env.update(RAY_TMPDIR=tmp, PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, cwd=tmp, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cpus 1.0" in proc.stdout  # its own instance, with the logical CPUs rfdist asked for

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


PROBE = """
import os, ray
from rfdist.runtime.cluster import connect_or_start_ray
connect_or_start_ray(None, 1)

@ray.remote(num_cpus=0)
class Cleaner:  # as Ray Train's placement-group cleaner: detached, made by the controller
    def where(self):
        from ray.dashboard.utils import get_address_for_submission_client
        return [os.environ.get("RAY_ADDRESS"), ray.get_runtime_context().gcs_address,
                get_address_for_submission_client(None)]

@ray.remote(num_cpus=0, runtime_env={"env_vars": {"RFDIST_PROBE": "1"}})  # as Ray Train's controller
class Controller:
    def ask(self):
        cleaner = Cleaner.options(lifetime="detached", name="probe-cleaner").remote()
        return ray.get(cleaner.where.remote())

print("probe", *ray.get(Controller.remote().ask.remote()))
print("dashboard", os.environ["RFDIST_DASHBOARD_URL"])
ray.shutdown()
"""


def test_state_api_in_workers_reaches_this_instance() -> None:
    """Ray picks the dashboard port; a detached actor made by an actor with its own runtime_env (the
    placement-group cleaner's situation) still resolves the state API to this instance's dashboard,
    through its own GCS address, not by scanning the machine for Ray processes."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="rt") as tmp:  # short: Ray's socket paths
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER"))}
        # as after `eval "$(cluster/local-head.sh env)"`: the shell names another cluster's dashboard
        env.update(RAY_TMPDIR=tmp, PYTHONPATH=str(ROOT), RAY_API_SERVER_ADDRESS="http://127.0.0.1:9")
        proc = subprocess.run(
            [sys.executable, "-c", PROBE], env=env, cwd=tmp, capture_output=True, text=True, timeout=300
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(
        line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("probe", "dash"))
    )
    ray_address, gcs, api_server = lines["probe"].split()
    assert ray_address == gcs
    assert api_server == lines["dashboard"]

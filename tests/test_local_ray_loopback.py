"""The local Ray instance ``rfdist train`` starts listens on loopback only: Ray's servers (GCS,
raylet, dashboard) and, while it trains, the Train workers with their torch/gloo sockets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TRAIN_PROBE = """
import json, sys, threading, time
import ray  # noqa: F401  (puts Ray's bundled psutil on the path)
import psutil
from rfdist.config import load_config
from rfdist.recipes.train import run_training

seen, stop = {}, threading.Event()

def sample():
    # every listening socket of the driver and of every process it started (GCS, raylet,
    # dashboard, the Train controller and the Train workers with their torch/gloo sockets)
    me = psutil.Process()
    while not stop.is_set():
        for proc in [me, *me.children(recursive=True)]:
            try:
                for c in proc.net_connections("inet"):
                    if c.status == "LISTEN":
                        title = " ".join(proc.cmdline())[:400]  # whole: the install path comes first
                        seen[f"{c.laddr.ip}:{c.laddr.port}"] = title
            except psutil.Error:
                pass
        time.sleep(0.3)

threading.Thread(target=sample, daemon=True).start()
cfg = load_config(sys.argv[1], sys.argv[2:])
run_training(cfg)
stop.set()
print("LISTENING " + json.dumps(seen))
"""


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_local_training_listens_on_loopback_only(tmp_path: Path) -> None:
    """While a 2-worker local run trains, nothing (torch.distributed's store included) is exposed."""
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("RAY_", "RFDIST_"))}
    env["PYTHONPATH"] = str(ROOT)
    overrides = [
        "name=loopback-train",
        "data.train_rows=2000",
        "data.test_rows=400",
        "train.max_steps=60",
        "train.batch_size=200",
        "train.checkpoint_every=30",
        "train.log_every=30",
        "scaling.num_workers=2",
        f"storage.path={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "registry.name=loopback-train",
    ]
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_PROBE, str(ROOT / "rfdist/presets/von-mises.yaml"), *overrides],
        env=env,
        capture_output=True,
        text=True,
        timeout=380,
        cwd=tmp_path,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("LISTENING ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-2000:]
    listening = json.loads(lines[-1][len("LISTENING ") :])
    workers = [title for title in listening.values() if "RayTrainWorker" in title or "ray::" in title]
    assert workers, f"no Ray worker listener sampled while training: {listening}"
    for server in ("gcs_server", "raylet", "dashboard"):  # Ray's own servers were sampled too
        assert any(server in title for title in listening.values()), (server, listening)
    exposed = {
        address: title
        for address, title in listening.items()
        if address.rpartition(":")[0] not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    }
    assert not exposed, f"non-loopback listeners while training: {exposed}"

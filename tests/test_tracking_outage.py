"""A tracking server that goes down for 30 s mid-run does not kill training; no metric is lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import mlflow
import pytest

from rfdist.recipes.train import run_training

from .ray_training import make_data, small_config
from .s3_server import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

OUTAGE_S = 30
# The server goes down at the step-50 checkpoint and its metrics drain at the sender's first retry
# after it is back (retries at 31 s, 61 s, 91 s after the crash), so the test lasts that long
# whatever the step count; 250 steps keep training going for well over 3 log intervals (30
# steps) into the outage, and "no metric lost" still compares each of the 25 logged steps.
MAX_STEPS = 250


def _start_server(tmp: Path, port: int) -> subprocess.Popen:
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    server = subprocess.Popen(
        [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp / 'mlflow.db'}",
         "--artifacts-destination", str(tmp / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, cwd=tmp,
    )  # fmt: skip
    deadline = time.monotonic() + 300  # a cold start (imports, store migrations) on a loaded 2-core machine
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited with code {server.returncode} on port {port}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            time.sleep(0.5)
    _kill(server)
    raise AssertionError("mlflow server did not start")


def _kill(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)  # the server crashes: no graceful shutdown
    server.wait(timeout=30)


def test_tracking_server_outage_mid_run_loses_no_metrics(tmp_path: Path, capfd) -> None:
    port = free_port()
    servers = [_start_server(tmp_path, port)]
    name = f"vm-outage-{uuid.uuid4().hex[:6]}"
    cfg = small_config(
        tmp_path,
        make_data(str(tmp_path / "vm"), rows=2000),
        f"train.max_steps={MAX_STEPS}",
        "train.batch_size=200",
        "train.checkpoint_every=50",
        "train.log_every=10",
        "scaling.num_workers=1",
        f"tracking.uri=http://127.0.0.1:{port}",
        name=name,
    )
    outage: dict[str, float] = {}

    def crash_and_restart() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not list((tmp_path / "runs" / name).glob("checkpoint_*")):
            time.sleep(0.2)
        _kill(servers[0])  # right after the first checkpoint: training is under way
        outage["down"] = time.time()
        time.sleep(OUTAGE_S)
        outage["up"] = time.time()  # from here on the server may answer again
        servers.append(_start_server(tmp_path, port))  # the same port, the same store

    chaos = threading.Thread(target=crash_and_restart, daemon=True)
    chaos.start()
    try:
        result = run_training(cfg)
        chaos.join(timeout=200)
        text = "".join(capfd.readouterr())
        assert "down" in outage and "up" in outage, "the server was never stopped"
        # the worker noticed the outage while training, and its buffer drained once the server was back
        assert "tracking server unreachable" in text and "tracking server back after" in text, text[-3000:]
        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        run = client.get_run(result.run_id)
        assert run.info.status == "FINISHED" and result.metrics["step"] == MAX_STEPS
        loss = client.get_metric_history(result.run_id, "train/loss")
        assert sorted(m.step for m in loss) == list(
            range(10, MAX_STEPS + 1, 10)
        )  # every logged step, none twice
        # training went on while the server was down (a metric's timestamp is when rank 0 logged it)
        during = [m.step for m in loss if outage["down"] * 1000 < m.timestamp < outage["up"] * 1000]
        assert len(during) >= 3, f"training stalled during the outage; steps logged then: {during}"
        val_steps = [m.step for m in client.get_metric_history(result.run_id, "val/nll")]
        assert sorted(val_steps) == list(range(50, MAX_STEPS + 1, 50))
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        assert len(client.search_runs([experiment.experiment_id])) == 1
    finally:
        chaos.join(timeout=OUTAGE_S + 150)
        for server in servers:
            _kill(server)

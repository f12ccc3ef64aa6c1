"""Ray Train resilience: a killed worker resumes from its checkpoint; a re-run resumes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.recipes.train import run_training

from .hooks import FailOnce
from .ray_training import PRESET, make_data, small_config

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("shared_ray")
def test_killed_worker_restarts_from_the_latest_checkpoint(tmp_path: Path, capfd) -> None:
    data = make_data(str(tmp_path / "vm"))
    cfg = small_config(
        tmp_path,
        data,
        "storage.max_failures=1",
        "estimator.name=auto",  # resolved by timing on both workers, again after the restart
        name="vm-fault",
    )
    result = run_training(cfg, worker_hooks=[FailOnce(step=130, rank=1, marker=tmp_path / "fault-marker")])
    output = capfd.readouterr()
    text = output.out + output.err
    assert "injected failure on rank 1 at step 130" in text
    assert "resumed from checkpoint at step 100" in text  # at most one checkpoint interval lost
    assert result.metrics["step"] == 300
    assert result.metrics["val/nll"] < 2.5
    history = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "val/nll")
    steps = [m.step for m in history]
    assert steps.count(100) == 1 and 300 in steps and 150 in steps
    assert text.count("[rfdist] estimator auto → ") >= 2  # first start and restart, rank 0
    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.data.tags["rfdist.estimator"] in ("exact", "hutchinson")
    assert run.data.metrics["perf/auto_exact_s"] > 0 and run.data.metrics["perf/auto_hutchinson_s"] > 0


@pytest.mark.usefixtures("shared_ray")
def test_rerunning_a_stopped_driver_resumes(tmp_path: Path, capfd) -> None:
    """The first driver is a real ``rfdist train`` process with its own Ray, stopped by SIGINT once
    its first checkpoint is on disk; the re-run is the same command in-process on this worker's
    shared Ray (a second subprocess would pay a second Ray start and torch import): the resume
    comes from the storage path and the MLflow run, not from the Ray instance."""
    data = make_data(str(tmp_path / "vm"))
    args = [
        sys.executable,
        "-m",
        "rfdist.cli",
        "train",
        str(PRESET),
        "--set",
        "name=vm-resume",
        "--set",
        f"data.path={data}",
        "--set",
        "data.synthetic=null",
        "--set",
        "train.max_steps=400",
        "--set",
        "train.batch_size=500",
        "--set",
        "train.checkpoint_every=50",
        "--set",
        "scaling.num_workers=1",
        "--set",
        f"storage.path={tmp_path / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "--set",
        "registry.name=vm-resume",
    ]
    first = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    runs = tmp_path / "runs" / "vm-resume"
    deadline = time.monotonic() + 480  # Ray start + 50 steps: >300 s on a loaded 2-core machine
    while time.monotonic() < deadline and not list(runs.glob("checkpoint_*/state.pt")):
        time.sleep(0.2)
    assert list(runs.glob("checkpoint_*/state.pt")), "no checkpoint appeared"
    os.killpg(first.pid, signal.SIGINT)  # the user stops the driver (Ctrl-C)
    first.communicate(timeout=120)
    capfd.readouterr()  # only the re-run's output below
    second = CliRunner().invoke(app, args[3:])  # `rfdist train …`, the same arguments
    output = capfd.readouterr()  # worker lines that reached the driver after the command returned
    text = second.output + output.out + output.err
    assert second.exit_code == 0, text[-3000:] + repr(second.exception)
    assert "resumed from checkpoint at step" in text
    resumed_at = int(text.split("resumed from checkpoint at step ")[1].split()[0])
    assert resumed_at >= 50
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs_found = client.search_runs(client.get_experiment_by_name("rfdist").experiment_id)
    assert len(runs_found) == 1 and runs_found[0].info.status == "FINISHED"  # the same MLflow run continued

"""No MLflow run left RUNNING, one writer per checkpoint folder (no Ray needed).

A training driver whose run is open is stopped (SIGTERM, as ``rfdist jobs stop`` sends it) or
fails; its MLflow run must end KILLED/FAILED with the reason in ``rfdist.failure``. A second
``rfdist train`` of the same name must find the first one's lock and refuse, naming it. Ray's
start is replaced (a timeout it raises, or a run blocked right after its MLflow run opened):
what is tested is the driver around it, in real processes, with a real sqlite MLflow store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rfdist.cli.main import app

from .s3_server import make_bucket, s3_server  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
VM = ROOT / "rfdist" / "presets" / "von-mises.yaml"

# this process's train stops at its MLflow run: Ray's start is skipped, building the trainer blocks
BLOCKED_TRAIN = """
import sys, threading
import rfdist.recipes.train as train
import rfdist.runtime.cluster as cluster
cluster.init_ray = lambda cfg, address: None
def block(*args, **kwargs):
    print("ready", flush=True)
    threading.Event().wait()
train._build_trainer = block
from rfdist.cli.main import main
sys.argv = ["rfdist", *sys.argv[1:]]
main()
"""


def _args(tmp: Path) -> list[str]:
    # 2000 rows: the smallest synthetic set the preset's batch of 1000 accepts; preflight only
    sets = [f"storage.path={tmp / 'runs'}", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            "data.train_rows=2000", "data.test_rows=200"]  # fmt: skip
    return ["train", str(VM), *[arg for item in sets for arg in ("--set", item)]]


def _error_line(output: str) -> str:
    """The one ``error:`` line of ``output`` (MLflow's own INFO log lines aside), no traceback."""
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def _runs(tmp: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return [run for e in client.search_experiments() for run in client.search_runs([e.experiment_id])]


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the synthetic data lands in tmp_path/.rfdist
    for key in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.slow
def test_ray_start_timeout_is_one_line_and_leaves_no_run(clean_env, tmp_path, monkeypatch) -> None:
    import ray

    def timed_out(*args, **kwargs):  # what ray.init raises when its node misses the 30 s start window
        raise Exception(
            "The current node timed out during startup. This could happen because some of the raylet "
            "failed to startup or the GCS has become overloaded."
        )

    monkeypatch.setattr(ray, "init", timed_out)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as if this worker's shared Ray were not up
    result = CliRunner().invoke(app, _args(tmp_path))
    assert result.exit_code == 1, result.output
    line = _error_line(result.output)
    assert line.startswith("error: Ray did not start: the local node timed out during startup"), line
    assert "--address" in line
    assert [run.info.status for run in _runs(tmp_path)] == []  # Ray starts before the run opens


@pytest.mark.slow
def test_failure_after_the_run_opens_marks_it_failed_with_the_reason(
    clean_env, tmp_path, monkeypatch
) -> None:
    import rfdist.recipes.train as train

    def crash(*args, **kwargs):  # e.g. Ray Data failing while the datasets are set up
        raise RuntimeError("ray.data read failed: column 'x' has nulls")

    monkeypatch.setattr("rfdist.runtime.cluster.init_ray", lambda cfg, address: None)
    monkeypatch.setattr(train, "_build_trainer", crash)
    result = CliRunner().invoke(app, _args(tmp_path))
    assert result.exit_code != 0
    [run] = _runs(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags["rfdist.failure"] == "RuntimeError: ray.data read failed: column 'x' has nulls"


@pytest.mark.slow
def test_second_train_of_a_name_is_refused_and_sigterm_marks_the_first_killed(clean_env, tmp_path) -> None:
    """Two concurrent `rfdist train` of one name: the second refuses in one line naming the first
    (its MLflow run, pid), before Ray; the first, stopped as `rfdist jobs stop` stops it (SIGTERM),
    ends KILLED with the reason, and its lock is free again."""
    from rfdist.runtime.lock import acquire

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    first = subprocess.Popen([sys.executable, "-c", BLOCKED_TRAIN, *_args(tmp_path)], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        for line in first.stdout:
            if line.strip() == "ready":
                break
        else:
            pytest.fail(f"the first run did not start: {first.stderr.read()[-2000:]}")
        [run] = _runs(tmp_path)
        assert run.info.status == "RUNNING"

        def tripwire(*args, **kwargs):
            raise AssertionError("Ray was started although the run is locked")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("rfdist.runtime.cluster.init_ray", tripwire)
            second = CliRunner().invoke(app, _args(tmp_path))
        assert second.exit_code == 1, second.output
        line = _error_line(second.output)
        assert line.startswith("error: storage.path: run 'von-mises' is being trained by another"), line
        assert f"MLflow run {run.info.run_id}, " in line and f"pid {first.pid}," in line
        assert len(_runs(tmp_path)) == 1  # the second opened no run

        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    finally:
        first.kill()
        first.wait()
    assert first.returncode != 0
    [run] = _runs(tmp_path)
    assert run.info.status == "KILLED"
    assert "SIGTERM" in run.data.tags["rfdist.failure"]
    with acquire(str(tmp_path / "runs"), "von-mises") as lock:  # free: the kernel released it anyway
        assert json.loads(Path(lock.where).read_text())["pid"] == os.getpid()


def test_lock_of_a_killed_owner_is_free_at_once(tmp_path) -> None:
    """A local lock is a kernel flock: SIGKILL of its owner (no clean-up at all) frees it."""
    from rfdist.runtime.lock import RunLocked, acquire

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from rfdist.runtime.lock import acquire; "
         f"lock = acquire({str(tmp_path)!r}, 'job'); lock.set_run_id('r1'); print('held', flush=True); "
         "time.sleep(600)"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=rf"MLflow run r1, host .*, pid {holder.pid},"):
            acquire(str(tmp_path), "job")
    finally:
        holder.kill()
        holder.wait()
    acquire(str(tmp_path), "job").release()


def test_s3_lease_is_created_once_and_a_stale_one_is_taken_over(s3_server, monkeypatch) -> None:
    """S3: the lease is a conditional put (If-None-Match); a live lease refuses, a lease whose
    heartbeat is older than STALE_S is replaced (If-Match on its ETag), once."""
    from botocore.exceptions import ClientError

    from rfdist.runtime import lock as locks

    make_bucket(s3_server, "lock-test")
    first = locks.acquire("s3://lock-test/runs", "job")
    first.set_run_id("r1")
    with pytest.raises(locks.RunLocked, match=r"MLflow run r1, host .*; lock s3://lock-test/runs/job.lock"):
        locks.acquire("s3://lock-test/runs", "job")
    first._stop.set()  # the owner dies: no more heartbeats
    monkeypatch.setattr(locks, "STALE_S", 0.0)
    second = locks.acquire("s3://lock-test/runs", "job")  # taken over
    monkeypatch.setattr(locks, "STALE_S", 3600.0)
    with pytest.raises(locks.RunLocked):
        locks.acquire("s3://lock-test/runs", "job")
    with pytest.raises(ClientError):  # the dead owner's renewal fails: its ETag is gone
        first._write()
    second.release()
    locks.acquire("s3://lock-test/runs", "job").release()


@pytest.mark.slow
def test_ctrl_c_after_the_run_opens_marks_it_killed(clean_env, tmp_path) -> None:
    """Ctrl-C (SIGINT) of a driver whose MLflow run is open: the run ends KILLED, not RUNNING."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_TRAIN, *_args(tmp_path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert any(line.strip() == "ready" for line in proc.stdout), proc.stderr.read()[-2000:]
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    [run] = _runs(tmp_path)
    assert run.info.status == "KILLED" and run.data.tags["rfdist.failure"] == "interrupted (Ctrl-C)"

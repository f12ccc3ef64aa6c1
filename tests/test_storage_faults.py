"""Checkpoint storage faults: a full disk fails clearly and keeps the previous checkpoint;
an S3 endpoint that restarts during a checkpoint upload is retried and the run completes."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import ray

from rfdist.recipes.train import TrainingError, run_training
from rfdist.runtime.checkpoint import load_state

from .ray_training import make_data, small_config
from .s3_server import BucketView, RestartableS3, make_bucket, restartable_s3  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

FILLER_CAP_MB = 96  # more than the tmpfs holds, far less than a real disk
BLIP_S = 5  # longer than pyarrow's default S3 retries last (3 attempts, ~2 s)
BLIP_STEPS = 150


@pytest.fixture
def private_ray():
    """For a test whose Ray must carry another S3 endpoint than the shared one: stopped after."""
    yield
    ray.shutdown()


def _loads(states) -> bool:
    """Whether a checkpoint among ``states`` is complete (loads with weights_only)."""
    for state in states:
        try:
            load_state(state.parent)
            return True
        except Exception:
            continue
    return False


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MiB tmpfs (needs root: mount); the test fills it mid-run."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_checkpointing_fails_clearly_and_keeps_the_previous_checkpoint(
    tmp_path: Path, small_disk: Path, shared_ray: None
) -> None:
    name = f"vm-full-{uuid.uuid4().hex[:6]}"
    cfg = small_config(
        tmp_path,
        make_data(str(tmp_path / "vm"), rows=2000),
        # the disk is full well under a second after the step-50 checkpoint has loaded: the
        # checkpoints at 100, 150 and 200 are three chances to hit it, and none is needed after
        "train.max_steps=200",
        "train.batch_size=200",
        "train.checkpoint_every=50",
        "scaling.num_workers=1",
        "storage.max_failures=0",
        f"storage.path={small_disk}",
        name=name,
    )
    run_dir = small_disk / name

    done = threading.Event()

    def fill_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while not list(run_dir.glob("checkpoint_*/state.pt")):
            if done.is_set() or time.monotonic() > deadline:
                return  # training ended (or failed) first: never fill anything
            time.sleep(0.1)
        while not _loads(run_dir.glob("checkpoint_*/state.pt")):  # the first upload has finished
            time.sleep(0.05)
        # only ever the 64 MiB tmpfs: never the real disk under it (e.g. after an unmount)
        with open(small_disk / "filler", "wb") as filler:  # the disk fills up (another job's data)
            try:
                for _ in range(FILLER_CAP_MB):
                    if done.is_set() or not os.path.ismount(small_disk):
                        break
                    filler.write(b"\0" * 2**20)
                    filler.flush()
            except OSError:
                pass

    filler = threading.Thread(target=fill_after_first_checkpoint, daemon=True)
    filler.start()
    try:
        with pytest.raises(TrainingError) as failure:
            run_training(cfg)
    finally:
        done.set()
        filler.join(timeout=60)
    message = str(failure.value)
    assert "No space left on device" in message, message
    assert len(message.splitlines()) == 1, message  # one line, not a Ray traceback
    states = sorted(run_dir.glob("checkpoint_*/state.pt"))
    assert states, "the first checkpoint is gone"
    first = load_state(states[0].parent)  # intact: loads with weights_only
    assert first.step == 50


def test_s3_restart_during_checkpoint_uploads_is_retried_and_the_run_completes(
    tmp_path: Path, private_ray: None, restartable_s3: RestartableS3
) -> None:
    make_bucket(restartable_s3.endpoint, "ckpt")
    name = f"vm-blip-{uuid.uuid4().hex[:6]}"
    cfg = small_config(
        tmp_path,
        make_data(str(tmp_path / "vm"), rows=2000),
        # S3 goes down at the first checkpoint (step 10) and the next upload blocks in its retries
        # until it is back: the 130-odd steps after that are logged after the outage
        f"train.max_steps={BLIP_STEPS}",
        "train.batch_size=200",
        "train.checkpoint_every=10",  # uploads every few hundred ms: the outage spans several
        "train.log_every=10",
        "scaling.num_workers=1",
        "storage.max_failures=0",  # retried by the S3 client, not by restarting the worker group
        "storage.path=s3://ckpt/runs",
        name=name,
    )
    outage: dict[str, float] = {}
    fs = BucketView(restartable_s3.endpoint)

    def restart_mid_run() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # S3 not up yet / listing raced an upload
                if fs.glob(f"ckpt/runs/{name}/checkpoint_*/state.pt"):
                    break
            time.sleep(0.2)
        restartable_s3.stop()  # the S3 endpoint restarts mid-upload
        outage["down"] = time.time()
        time.sleep(BLIP_S)
        outage["up"] = time.time()
        restartable_s3.start()

    chaos = threading.Thread(target=restart_mid_run, daemon=True)
    chaos.start()
    result = run_training(cfg)
    chaos.join(timeout=BLIP_S + 60)
    assert "down" in outage and "up" in outage, "S3 was never restarted"
    assert result.metrics["step"] == BLIP_STEPS  # the driver read the final checkpoint back from S3
    # S3 went down mid-training (uploads block in their retries meanwhile): steps logged after it was back
    loss = mlflow.MlflowClient(result.tracking_uri).get_metric_history(result.run_id, "train/loss")
    after = [m.step for m in loss if m.timestamp > outage["up"] * 1000]
    assert after, "training had ended before the S3 outage"
    assert result.checkpoint_path and name in result.checkpoint_path

"""Node loss: a local 3-node Ray cluster (head + 2 workers, separate raylets on 127.0.0.1),
checkpoints on S3 (moto). Killing the worker node that runs training resumes from the last
checkpoint on the node that is left: one MLflow run, no checkpoint lost."""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from pathlib import Path

import mlflow
import pytest
import ray

from rfdist.recipes.train import run_training
from rfdist.runtime.checkpoint import load_state
from rfdist.runtime.cluster import loopback_only

from .ray_training import make_data, small_config
from .s3_server import BucketView, make_bucket, s3_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

MAX_STEPS = 300


def _steps_on_s3(fs, prefix: str) -> dict[str, int]:
    steps = {}
    for folder in fs.glob(f"{prefix}/checkpoint_*"):
        with tempfile.TemporaryDirectory() as local:
            try:
                fs.get(f"{folder}/state.pt", f"{local}/state.pt")
            except FileNotFoundError:
                continue
            steps[folder] = load_state(local).step
    return steps


def _training_node(cluster):
    """The worker node whose raylet runs the Train workers (their parent process)."""
    import psutil  # Ray's bundled copy (importable once ray is)

    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    for proc in psutil.process_iter(["cmdline"]):
        if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
            for parent in proc.parents():
                if parent.pid in raylets:
                    return raylets[parent.pid]
    return None


@pytest.mark.timeout(600)
def test_losing_a_worker_node_resumes_from_the_last_checkpoint(tmp_path: Path, s3_server: str, capfd) -> None:
    from ray.cluster_utils import Cluster

    make_bucket(s3_server, "nodes")
    ray.shutdown()  # this test needs a cluster of its own, not the worker's shared Ray
    loopback_only()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 * 1024**2},
    )
    # two worker nodes, each big enough for the whole training group: one worker with both of a
    # node's CPUs (node loss needs no DDP; 2 CPUs keep it off the 1-CPU head, on a node we can kill)
    workers = [cluster.add_node(num_cpus=2, object_store_memory=150 * 1024**2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    name = f"vm-node-{uuid.uuid4().hex[:6]}"
    cfg = small_config(
        tmp_path,
        make_data(str(tmp_path / "vm"), rows=2000),
        # the node goes at the first checkpoint on S3 (step 50): 250 steps (~10 s) are left, so the
        # kill lands mid-run, and the resume finishes on the node that is left
        f"train.max_steps={MAX_STEPS}",
        "train.batch_size=200",
        "train.checkpoint_every=50",
        "train.log_every=50",
        "scaling.num_workers=1",
        "scaling.cpus_per_worker=2",
        "storage.max_failures=1",
        "storage.keep=20",
        "storage.path=s3://nodes/runs",
        name=name,
    )
    fs = BucketView(s3_server)
    prefix = f"nodes/runs/{name}"
    killed: dict = {}

    def kill_training_node() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not fs.glob(f"{prefix}/checkpoint_*/state.pt"):
            time.sleep(0.5)
        node = _training_node(cluster)
        killed["before"] = _steps_on_s3(fs, prefix)
        if node is not None:
            cluster.remove_node(node, allow_graceful=False)  # the machine is gone
            killed["node"] = node

    chaos = threading.Thread(target=kill_training_node, daemon=True)
    chaos.start()
    try:
        result = run_training(cfg)
        chaos.join(timeout=60)
        text = "".join(capfd.readouterr())
        assert "node" in killed, "no worker node ran the training group"
        assert len([n for n in workers if n is not killed["node"]]) == 1
        before = killed["before"]
        assert before, "no checkpoint on S3 when the node was killed"
        resumed_at = int(text.split("resumed from checkpoint at step ")[1].split()[0])
        assert resumed_at >= max(before.values())  # the newest checkpoint at the kill, or later
        after = _steps_on_s3(fs, prefix)
        assert set(before) <= set(after)  # no checkpoint lost
        assert result.metrics["step"] == MAX_STEPS and max(after.values()) == MAX_STEPS
        client = mlflow.MlflowClient(result.tracking_uri)
        runs = client.search_runs([client.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    finally:
        chaos.join(timeout=60)
        ray.shutdown()
        cluster.shutdown()

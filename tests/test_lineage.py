"""A 2-worker `rfdist train` from a git checkout, in a real process with the local Ray it starts:
nothing listens beyond loopback, a clean console, and a run you can trace back.

One run serves the three checks: each local run costs a Ray start-up and a worker group, which
is most of this test's time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .ray_training import PRESET, make_data

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

# `rfdist train ARGS…` in this process, while a thread samples every listening socket of the
# process and of every process it starts (GCS, raylet, dashboard, the Train controller and the
# Train workers with their torch/gloo sockets); printed as one LISTENING line at the end
LISTEN_PROBE = """
import json, sys, threading, time
import psutil

seen, stop = {}, threading.Event()

def sample():
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
from rfdist.cli.main import main
sys.argv = ["rfdist", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
stop.set()
print("LISTENING " + json.dumps(seen), flush=True)
sys.exit(code)
"""


def _exposed(listening: dict[str, str]) -> dict[str, str]:
    """The sampled listeners not on a loopback address."""
    loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
    return {
        address: title for address, title in listening.items() if address.rpartition(":")[0] not in loopback
    }


@pytest.mark.timeout(600)
def test_two_worker_run_listens_on_loopback_only_with_a_clean_console_and_lineage(tmp_path: Path) -> None:
    """While the run trains nothing (torch.distributed's store included) is exposed; the console
    holds rfdist's lines once and no noise; the run, model and version trace back to the commit
    and the data."""
    import mlflow

    from rfdist.tracking.lineage import dataset_digest, git_commit

    data = make_data(str(tmp_path / "vm"), rows=2000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    dropped = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(("RAY_", "RFDIST_"))}
    env["MLFLOW_EXPERIMENT_NAME"] = "lineage-exp"
    env["PYTHONPATH"] = str(ROOT)
    overrides = ["name=lineage", f"data.path={data}", "data.synthetic=null", "train.max_steps=100",
                 "train.batch_size=500", "train.checkpoint_every=100", "train.log_every=50",
                 "scaling.num_workers=2", f"storage.path={tmp_path / 'runs'}", f"tracking.uri={uri}",
                 "registry.name=lineage"]  # fmt: skip
    argv = [sys.executable, "-c", LISTEN_PROBE, "train", str(PRESET)]
    for item in overrides:
        argv += ["--set", item]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=580)
    lines = [line for line in done.stdout.splitlines() if line.startswith("LISTENING ")]
    console = "\n".join(
        line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("LISTENING ")
    )
    assert done.returncode == 0 and lines, console[-3000:]

    listening = json.loads(lines[-1][len("LISTENING ") :])
    workers = [title for title in listening.values() if "RayTrainWorker" in title or "ray::" in title]
    assert workers, f"no Ray worker listener sampled while training: {listening}"
    for server in ("gcs_server", "raylet", "dashboard"):  # Ray's own servers were sampled too
        assert any(server in title for title in listening.values()), (server, listening)
    assert not _exposed(listening), f"non-loopback listeners while training: {_exposed(listening)}"

    assert console.count("[rfdist] step 100/100") == 1, console
    assert console.count("[rfdist] step 100  val/nll") == 1, console
    for noise in (
        "Downloading artifacts", "Add type hints", "serialized using CloudPickle",
        # Ray's own INFO/notice lines and warnings about Ray's internals (rfdist.runtime.console)
        "Reporting training result", "Checkpoint successfully created", "Progress bars disabled",
        "Estimated parquet", "execution finished", "DeprecationWarning",
        "NumPy array is not writable",  # torch.from_numpy on a read-only Arrow view
        "PreemptionWatcher",  # Ray Train's drain watcher, off on a private one-node Ray
        # output to a file (not a terminal): no colour codes around "(RayTrainWorker pid=…)";
        # MLflow's database INFO lines and its own words about the registration stay out
        "\x1b", "Creating initial MLflow database", "Context impl", "Successfully registered model",
        "Created version",
    ):  # fmt: skip
        assert noise not in console, noise
    assert "(aliases: champion;" in console
    assert f"[rfdist] MLflow UI: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --workers 1" in console
    assert "[rfdist] Ray dashboard: http://127.0.0.1:" in console

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("lineage-exp")  # MLFLOW_EXPERIMENT_NAME honoured
    assert experiment is not None
    run = client.search_runs([experiment.experiment_id])[0]
    commit = git_commit(ROOT)
    if commit:  # tests run from a git checkout
        assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags.get("mlflow.user") and run.data.tags.get("mlflow.note.content")
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [dataset_digest(data)]

    from typer.testing import CliRunner

    from rfdist.cli.main import app

    shown = CliRunner().invoke(app, ["models", "show", "lineage", "--tracking-uri", uri])
    assert shown.exit_code == 0, shown.output
    record = json.loads(shown.output)
    assert record["aliases"] == ["champion"]
    assert record["tags"]["dataset_digest"] == dataset_digest(data) and "val_nll" in record["tags"]
    assert "val NLL" in record["description"]
    model_id = run.data.tags["rfdist.model_uri"].removeprefix("models:/")
    logged = client.get_logged_model(model_id)
    assert logged.name == "lineage"
    assert "final_val_nll" in {m.key for m in logged.metrics or []}

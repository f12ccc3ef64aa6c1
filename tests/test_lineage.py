"""A 2-worker `rfdist train` from a git checkout: a clean console, and a run you can trace back."""

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


def test_two_worker_run_console_and_lineage(tmp_path: Path) -> None:
    import mlflow

    from rfdist.tracking.lineage import dataset_digest, git_commit

    data = make_data(str(tmp_path / "vm"), rows=2000)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_EXPERIMENT_NAME"] = "lineage-exp"
    overrides = ["name=lineage", f"data.path={data}", "data.synthetic=null", "train.max_steps=100",
                 "train.batch_size=500", "train.checkpoint_every=100", "train.log_every=50",
                 "scaling.num_workers=2", f"storage.path={tmp_path / 'runs'}", f"tracking.uri={uri}",
                 "registry.name=lineage"]  # fmt: skip
    argv = [sys.executable, "-m", "rfdist.cli", "train", str(PRESET)]
    for item in overrides:
        argv += ["--set", item]
    done = subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    console = done.stdout + done.stderr
    assert done.returncode == 0, console[-3000:]
    assert console.count("[rfdist] step 100/100") == 1, console
    assert console.count("[rfdist] step 100  val_nll") == 1, console
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

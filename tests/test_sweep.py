"""Sweeps: Ray Tune over the estimator's hyperparameters, each trial a Ray Train run, in MLflow."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.tracking.models import load_model

from .ray_training import PRESET, make_data

SPACE = "tune.space={estimator: {grid: [{name: exact}, {name: hutchinson, num_samples: 1}]}, train.lr: [5.0e-3, 1.0e-6]}"


def sweep_args(tmp: Path, data: str, name: str, *extra: str) -> list[str]:
    return [
        "sweep",
        str(PRESET),
        "--set",
        f"name={name}",
        "--set",
        f"data.path={data}",
        "--set",
        "data.synthetic=null",
        "--set",
        "train.max_steps=100",
        "--set",
        "train.batch_size=500",
        "--set",
        "train.checkpoint_every=20",
        "--set",
        "train.log_every=20",
        "--set",
        f"storage.path={tmp / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        "--set",
        f"registry.name={name}",
        "--set",
        "tune.search=grid",
        "--set",
        "tune.num_samples=1",
        "--set",
        "tune.grace_period=20",
        "--set",
        "tune.reduction_factor=2",
        "--set",
        "tune.max_concurrent_trials=1",
        *extra,
    ]


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ("{estimator.bogus: [1, 2]}", "tune.space.estimator.bogus: unknown config key"),
        (
            "{estimator.num_samples: {choice: []}}",
            "tune.space.estimator.num_samples: choice needs a non-empty",
        ),
        ("{train.lr: {loguniform: [1.0e-2, 1.0e-4]}}", "tune.space.train.lr: loguniform needs low <= high"),
        ("{estimator.num_samples: [0, 4]}", "tune.space.estimator.num_samples: value 0 is not valid"),
        ("{estimator.num_samples: {randint: [0, 4]}}", "tune.space.estimator.num_samples: value 0"),
        ("{model.latent_dim: [1, 2]}", "tune.space.model.latent_dim: value 2"),
        ("{storage.path: [a, b]}", "tune.space.storage.path: 'storage' settings cannot be swept"),
        ("{train.lr: {normal: [0, 1]}}", "tune.space.train.lr: expected one of"),
    ],
)
def test_bad_search_space_fails_before_any_trial(tmp_path: Path, space: str, expected: str) -> None:
    data = make_data(str(tmp_path / "data"), rows=500)
    args = sweep_args(tmp_path, data, "bad-space", "--set", f"tune.space={space}")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert f"error: {expected}" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # no trial started, nothing stored
    assert not (tmp_path / "mlflow.db").exists()


def _runs(tmp: Path, name: str, experiment_name: str = "rfdist"):
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)  # not the process-wide registry
    experiment = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("rfdist.sweep_name") == name]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


@pytest.mark.slow
@pytest.mark.usefixtures("shared_ray")
def test_sweep_with_asha_tracks_trials_and_registers_the_best(tmp_path: Path) -> None:
    data = make_data(str(tmp_path / "data"), rows=4000)
    # 40 steps, not 100: with grace 20 and reduction factor 2, ASHA's one rung is step 20. The
    # first trial there (lr 5e-3, trials run one at a time) always goes on and completes at 40;
    # the lr 1e-6 trials, still untrained at step 20, fall below the rung's cutoff and are
    # stopped there. Steps beyond the rung only lengthened the completed trials.
    args = sweep_args(tmp_path, data, "sweep-asha", "--set", SPACE, "--set", "train.max_steps=40")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    client, parent, children = _runs(tmp_path, "sweep-asha")

    # One parent, one child per trial, each with its params, metrics and why it stopped.
    assert parent.info.status == "FINISHED"
    assert len(children) == 4
    reasons = [c.data.tags["rfdist.stop_reason"] for c in children]
    assert any(r.startswith("stopped early by the scheduler") for r in reasons), reasons
    assert "completed" in reasons
    for child in children:
        assert child.data.params["estimator.name"] in ("exact", "hutchinson")
        assert float(child.data.params["train.lr"]) in (5e-3, 1e-6)
        # one name per quantity: the child run holds what Tune saw, under the same keys
        assert "val/nll" in child.data.metrics and "perf/s_per_step" in child.data.metrics
        assert child.data.metrics["perf/peak_mem_mb"] > 0
        assert not {"s_per_step", "val_nll", "peak_mem_mb"} & set(child.data.metrics)
    hutchinson = [c for c in children if c.data.params["estimator.name"] == "hutchinson"]
    assert all(c.data.metrics["perf/matvecs_per_step"] >= 1 for c in hutchinson)
    exact = [c for c in children if c.data.params["estimator.name"] == "exact"]
    assert all(c.data.metrics["perf/tangent_passes_per_step"] == 1 for c in exact)  # d = 1 jvp per step

    # The summary table and the Pareto plot live on the parent.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert "sweep/summary.csv" in artifacts
    assert any(a.path == "plots/pareto.png" for a in client.list_artifacts(parent.info.run_id, "plots"))
    assert parent.data.metrics["trials"] == 4
    assert parent.data.metrics["trials_stopped_early"] >= 1

    # The best completed trial is registered with alias sweep-best and loads back.
    version = client.get_model_version_by_alias("sweep-asha", "sweep-best")
    best = client.get_run(version.run_id)
    completed = [c for c in children if c.data.tags["rfdist.stop_reason"] == "completed"]
    assert best.data.metrics["val/nll"] == min(c.data.metrics["val/nll"] for c in completed)
    assert parent.data.tags["rfdist.best_run_id"] == version.run_id
    model = load_model("models:/sweep-asha@sweep-best", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert torch.isfinite(model.log_prob(x)).all()
    assert "registered         sweep-asha v1 (alias: sweep-best)" in result.output


@pytest.mark.usefixtures("shared_ray")
def test_interrupted_sweep_resumes(tmp_path: Path, monkeypatch, capfd) -> None:
    """Ctrl-C, then the same command resumes; under ``MLFLOW_EXPERIMENT_NAME``, where the parent
    run must sit with its trials' runs for the sweep to find them (stop reasons, the best model).
    The first sweep is a real ``rfdist sweep`` process with its own Ray (Ctrl-C reaches it); the
    re-run is the same command in-process on this worker's shared Ray (a second process would pay
    a second Ray start and torch import): the resume comes from Tune's state on storage and the
    MLflow runs, not from the Ray instance. The shared Ray's workers lack ``MLFLOW_EXPERIMENT_NAME``
    (as a cluster's workers lack a user's shell variables): the trials must take the experiment
    from the sweep, not from their environment."""
    data = make_data(str(tmp_path / "data"), rows=4000)
    space = "tune.space={estimator.num_samples: [1, 2]}"
    args = [
        *sweep_args(tmp_path, data, "sweep-resume", "--set", space),
        "--set",
        "estimator.name=hutchinson",
        "--set",
        "tune.scheduler=none",
        "--set",
        # 100 steps, not 160: the interrupt comes at the first val/nll (step 20) and Tune stops the
        # trial about 10 steps later (1.1 s at 120 ms a step on a loaded machine), so 80 steps
        # left keep it unfinished, to be resumed from its checkpoint, with an 8x margin
        "train.max_steps=100",
    ]
    command = [sys.executable, "-m", "rfdist.cli", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_EXPERIMENT_NAME": "sweep-team"}
    log = tmp_path / "first.log"
    with log.open("w") as out:
        first = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        deadline = time.time() + 400
        while time.time() < deadline and "val/nll" not in log.read_text():
            assert first.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert "val/nll" in log.read_text(), log.read_text()[-3000:]
        first.send_signal(signal.SIGINT)
        code = first.wait(timeout=300)
    text = log.read_text()
    assert code == 130, text[-3000:]
    assert "run the same command again to resume it" in text
    tune_chatter = ("Configuration for experiment", "View detailed results", "TensorBoard", "Tuner.restore",
                    "Trial status", "Stop signal received")  # fmt: skip
    assert not [line for line in text.splitlines() if any(c in line for c in tune_chatter)], text[-3000:]
    assert text.count("[rfdist] MLflow UI:") == 1, text[-3000:]
    _, parent, children = _runs(tmp_path, "sweep-resume", "sweep-team")
    assert parent.info.status == "KILLED"  # no run left RUNNING; the same command resumes it
    assert "run the same command again to resume it" in parent.data.tags["rfdist.failure"]
    assert "RUNNING" not in [c.info.status for c in children]  # the interrupted trial's run: KILLED

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "sweep-team")
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()  # only the re-run's output below
    second = CliRunner().invoke(app, args)  # `rfdist sweep …`, the same arguments
    captured = capfd.readouterr()  # the trials' lines, which reach this process's stdout
    output = second.output + captured.out + captured.err
    assert second.exit_code == 0, output[-3000:] + repr(second.exception)
    assert "resuming sweep 'sweep-resume'" in output
    assert output.count("[rfdist] MLflow UI:") == 1  # the sweep's hint, once, not once per trial
    assert not [line for line in output.splitlines() if any(c in line for c in tune_chatter)], output[-3000:]
    assert "resumed from checkpoint at step" in output  # the interrupted trial continued
    client, parent_after, children = _runs(tmp_path, "sweep-resume", "sweep-team")
    assert parent_after.info.run_id == parent.info.run_id and parent_after.info.status == "FINISHED"
    assert len(children) == 2  # one per trial, not one per attempt
    assert all(c.data.tags["rfdist.stop_reason"] == "completed" for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert str(client.get_model_version_by_alias("sweep-resume", "sweep-best").version) == "1"


def test_sweep_finds_its_trials_under_mlflow_experiment_name(tmp_path: Path, monkeypatch) -> None:
    """With ``MLFLOW_EXPERIMENT_NAME`` set, the parent run and its trials share one experiment.

    A real sqlite store: the parent is opened as ``run_sweep`` opens it, a trial's run as
    ``run_training`` opens it (child of the parent, via :func:`rfdist.tracking.runs.open_run`),
    and the sweep's lookup must find it.
    """
    from rfdist.config import load_config
    from rfdist.recipes.sweep import trial_config
    from rfdist.tracking.runs import child_runs, open_parent_run, open_run

    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team-sweeps")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    cfg = load_config(None, ["name=envsweep", f"storage.path={tmp_path / 'runs'}", f"tracking.uri={uri}"])
    parent = open_parent_run(mlflow, cfg)
    trial = trial_config(cfg.model_dump(mode="json"), {"train.lr": 0.01}, "envsweep-abc12_00000")
    tags = {"mlflow.parentRunId": parent, "rfdist.trial_id": "abc12_00000"}
    child, _ = open_run(mlflow, trial, cfg.storage.path, tags)
    client = mlflow.MlflowClient()
    assert (
        client.get_run(child).info.experiment_id == client.get_experiment_by_name("team-sweeps").experiment_id
    )
    assert client.get_run(parent).info.experiment_id == client.get_run(child).info.experiment_id
    ids, _ = child_runs(client, client.get_run(parent).info.experiment_id, parent)
    assert ids == {"abc12_00000": child}
    assert open_parent_run(mlflow, cfg) == parent  # a re-run resumes the same parent

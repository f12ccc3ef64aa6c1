"""An MLflow run a reader can scan: the params that apply, one tag per fact, portable dataset
records, a machine-learning experiment, ISO times. A real sqlite MLflow store, no Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow
import pytest
from typer.testing import CliRunner

from rfdist.config import load_config
from rfdist.tracking.lineage import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, dataset_uri, log_dataset, run_tags
from rfdist.tracking.runs import experiment_for, latest_run, log_params, open_run


@pytest.fixture
def store(tmp_path: Path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        None, ["name=vm", f"storage.path={tmp_path / 'runs'}", "tracking.experiment=readable", *extra]
    )


def test_plain_run_params_hold_only_the_sections_that_apply(store, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_id, _ = open_run(mlflow, cfg, cfg.storage.path)
    log_params(mlflow, run_id, cfg)
    params = mlflow.MlflowClient().get_run(run_id).data.params
    assert params["train.max_steps"] == str(cfg.train.max_steps)
    assert not [k for k in params if k.startswith(("tune.", "debug."))], sorted(params)


def test_run_tags_hold_each_fact_once_and_lookups_use_mlflows_run_name(store, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert "rfdist.git_commit" not in run_tags()
    run_id, _ = open_run(mlflow, cfg, cfg.storage.path)
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["mlflow.runName"] == "vm"
    assert not {"rfdist.run_name", "rfdist.git_commit"} & set(tags), sorted(tags)
    # the job's next start finds its run by MLflow's run name and storage
    _, found = latest_run(mlflow, cfg, cfg.storage.path)
    assert found is not None and found.info.run_id == run_id
    other = _cfg(tmp_path, "name=other")
    assert latest_run(mlflow, other, other.storage.path)[1] is None
    assert open_run(mlflow, cfg, cfg.storage.path)[0] == run_id  # unfinished: the same run resumes


def test_the_experiment_opens_as_a_machine_learning_experiment(store, tmp_path: Path) -> None:
    experiment = experiment_for(mlflow, _cfg(tmp_path))
    tags = mlflow.MlflowClient().get_experiment(experiment.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # a kind the user chose stays
    mlflow.MlflowClient().set_experiment_tag(
        experiment.experiment_id, EXPERIMENT_KIND_TAG, "genai_development"
    )
    experiment_for(mlflow, _cfg(tmp_path))
    assert (
        mlflow.MlflowClient().get_experiment(experiment.experiment_id).tags[EXPERIMENT_KIND_TAG]
        == "genai_development"
    )


def test_mlflow_knows_the_experiment_kind_tag() -> None:
    # the key and value are MLflow's own, not a guess: its UI reads that tag and names that kind
    ui = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundles = [p.read_text(errors="replace") for p in ui.glob("main.*.js")]
    if not bundles:
        pytest.skip("this MLflow install has no UI build (mlflow-skinny)")
    assert any(f'"{EXPERIMENT_KIND_TAG}"' in b and f'"{EXPERIMENT_KIND}"' in b for b in bundles)


def test_the_dataset_record_is_the_uri_the_user_gave(store, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert dataset_uri(cfg) == "synthetic:von-mises"
    assert dataset_uri(_cfg(tmp_path, "data.path=s3://bucket/vm", "data.synthetic=null")) == "s3://bucket/vm"
    materialized = tmp_path / "runs" / "synthetic" / "von-mises-seed0"  # machine-local, as rfdist writes it
    (materialized / "train").mkdir(parents=True)
    run_id, _ = open_run(mlflow, cfg, cfg.storage.path)
    log_dataset(run_id, str(materialized), name="von-mises", source=dataset_uri(cfg))
    (entry,) = mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs
    assert "synthetic:von-mises" in entry.dataset.source and str(tmp_path) not in entry.dataset.source


def test_models_show_prints_iso_times(store, tmp_path: Path) -> None:
    from rfdist.cli.main import app

    client = mlflow.MlflowClient()
    client.create_registered_model("vm")
    client.create_model_version("vm", source=str(tmp_path / "model"))
    shown = CliRunner().invoke(app, ["models", "show", "vm/1", "--tracking-uri", store])
    assert shown.exit_code == 0, shown.output
    created = json.loads(shown.output)["created"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", created), created


def test_the_mlflow_ui_hint_runs_one_worker() -> None:
    # 4 uvicorn workers (MLflow's default) did not answer /health within minutes on a loaded machine
    from rfdist.runtime.console import start_hints

    (line,) = start_hints("sqlite:////tmp/x/mlflow.db")
    assert line.endswith(
        "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1 --workers 1"
    )

"""The registry's ``champion``: a worse run never takes it; ``rfdist models promote`` moves it.

Real MLflow (sqlite) and real logged flows; :func:`register_with_aliases` is what
``run_training`` calls after every run with the run's ``final_val_nll``.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import load_config
from rfdist.core.builders import build_model
from rfdist.tracking.models import log_flow_model, register_with_aliases

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "sphere.yaml"


def _register(uri: str, name: str, val_nll: float) -> tuple[str, list[str]]:
    cfg = load_config(PRESET, ["model.flow_layers=1", "model.flow_hidden=[4]", "model.density_layers=1"])
    spec = cfg.model.spec((3,), 0)
    # an explicit experiment: another test in this process may have left a different one active
    experiment = mlflow.set_experiment("champion").experiment_id
    with mlflow.start_run(experiment_id=experiment):
        mlflow.log_metric("final_val_nll", val_nll)
        logged = log_flow_model(build_model(spec), spec, registered_model_name=name)
    version = str(logged.registered_model_version)
    return version, register_with_aliases(
        name, version, metric="final_val_nll", value=val_nll, tracking_uri=uri
    )


def _champion(client) -> str:
    return str(client.get_model_version_by_alias("flow", "champion").version)


def test_a_worse_run_does_not_take_champion_and_promote_moves_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri)

    v1, aliases = _register(uri, "flow", 2.0)
    assert "champion" in aliases
    v2, aliases = _register(uri, "flow", 2.5)  # worse
    assert aliases == []  # no alias moved (`latest` is resolved, not an alias)
    assert _champion(client) == v1
    v3, aliases = _register(uri, "flow", float("nan"))  # never wins
    assert aliases == []  # no alias moved (`latest` is resolved, not an alias)
    v4, aliases = _register(uri, "flow", 1.5)  # better
    assert "champion" in aliases and _champion(client) == v4

    runner = CliRunner()
    result = runner.invoke(app, ["models", "promote", "flow", v2, "champion", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"flow@champion -> v{v2}" in result.output
    assert _champion(client) == v2
    result = runner.invoke(app, ["models", "promote", "flow", "99", "champion", "--tracking-uri", uri])
    assert result.exit_code != 0 and "error: cannot promote flow v99" in result.output
    assert _champion(client) == v2  # unchanged
    assert {v1, v2, v3, v4} == {"1", "2", "3", "4"}


def test_a_model_name_with_a_backslash_finds_its_version_tags(tmp_path: Path) -> None:
    """``models:/NAME/latest`` checks the weights against the registered version's digest tags,
    found by a registry filter that quotes NAME as MLflow reads it (no escapes: a ``\\`` stays one)."""
    import pytest

    from rfdist.tracking.models import STATE_DIGEST_KEY, ModelIntegrityError, get_model_record, load_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in ("plain", "back\\slash"):  # MLflow refuses ' and " in a model name
        version, _ = _register(uri, name, 1.0)
        assert get_model_record(name, tracking_uri=uri).version == version
        load_flow(f"models:/{name}/latest")  # the recorded digests match
        client.set_model_version_tag(name, version, STATE_DIGEST_KEY, "0" * 64)
        with pytest.raises(ModelIntegrityError, match="does not match"):
            load_flow(f"models:/{name}/latest")

"""Models logged before the package redesign still load, score the same, and name a class that exists.

``tests/fixtures/model-before-layers`` is the model folder that ``log_flow_model`` wrote (and
registered) with the flat-module code, minus the copy of rfdist's sources under ``code/`` that
only ``mlflow models serve`` reads; ``expected.json`` holds its version's tags and the
``log_prob`` it gave then for five rows.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import mlflow
import pytest
import torch

FIXTURE = Path(__file__).parent / "fixtures" / "model-before-layers"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture()
def registered_old_model(tmp_path: Path) -> str:
    """The fixture folder as a run artifact, registered as ``old@champion`` with its original tags."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("compat", artifact_location=str(tmp_path / "artifacts"))
    run = client.create_run(experiment)
    for item in FIXTURE.iterdir():
        if item.name == "expected.json":
            continue
        if item.is_dir():
            client.log_artifacts(run.info.run_id, str(item), f"model/{item.name}")
        else:
            client.log_artifact(run.info.run_id, str(item), "model")
    client.create_registered_model("old")
    version = client.create_model_version("old", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    for key, value in EXPECTED["version_tags"].items():
        client.set_model_version_tag("old", version.version, key, value)
    client.set_registered_model_alias("old", "champion", version.version)
    return uri


def test_an_old_model_loads_through_the_registry_and_scores_as_it_did(registered_old_model: str) -> None:
    from rfdist.tracking import load_flow, load_model
    from rfdist.tracking.pyfunc import score_rows

    # its version's tags predate rfdist_preprocess_sha256: loaded, with a loud warning
    with pytest.warns(UserWarning, match=r"preprocess\.json has no sha256 .* NOT verified"):
        model = load_model("models:/old@champion", tracking_uri=registered_old_model)
    rows = torch.tensor(EXPECTED["rows"])
    with pytest.warns(UserWarning, match="NOT verified"):
        preprocess = load_flow("models:/old@champion", tracking_uri=registered_old_model).preprocess
    log_prob = score_rows(model, rows, preprocess)["log_prob"]
    assert torch.allclose(
        log_prob.double(), torch.tensor(EXPECTED["log_prob"], dtype=torch.float64), atol=1e-5
    )
    assert model.sample(4).shape == (4, 3)


def test_an_old_model_still_refuses_tampered_weights(registered_old_model: str, tmp_path: Path) -> None:
    """The digest check covers old models too: the registry's tag must match the weights."""
    from rfdist.tracking import load_model
    from rfdist.tracking.models import ModelIntegrityError

    client = mlflow.MlflowClient(registered_old_model, registry_uri=registered_old_model)
    client.set_model_version_tag("old", "1", "rfdist_state_sha256", "0" * 64)
    with pytest.raises(ModelIntegrityError, match=r"state\.pt"):
        load_model("models:/old@champion", tracking_uri=registered_old_model)


def test_the_pickled_pyfunc_names_a_class_that_still_exists() -> None:
    """``python_model.pkl`` refers to ``rfdist.mlflow_model.RectangularFlowPyfunc`` by name."""
    from rfdist.tracking.pyfunc import RectangularFlowPyfunc

    raw = (FIXTURE / "python_model.pkl").read_bytes()
    assert b"rfdist.mlflow_model" in raw
    assert type(pickle.loads(raw)) is RectangularFlowPyfunc


def test_old_module_paths_import_the_moved_modules_with_a_warning() -> None:
    import importlib
    import sys

    from rfdist._moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)  # a first import in this process, so the finder runs
        with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
            module = importlib.import_module(old)
        assert module is importlib.import_module(new)

"""The MLflow internal rfdist relies on (rfdist.tracking.mlflow_internals) still behaves as assumed,
and the system tag keys and dataset inputs rfdist writes through public APIs are MLflow's own."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


def test_context_tags_are_mlflows_run_context() -> None:
    """context_tags() is what start_run would add: the user, source name and source type."""
    try:
        registry = importlib.import_module("mlflow.tracking.context.registry")
    except ImportError as exc:
        pytest.fail(f"MLflow internal mlflow.tracking.context.registry is gone ({exc})")
    from rfdist.tracking.lineage import USER_TAG
    from rfdist.tracking.mlflow_internals import context_tags

    tags = context_tags()
    assert tags == registry.resolve_tags({})
    for key in (USER_TAG, "mlflow.source.name", "mlflow.source.type"):
        assert tags.get(key), f"MLflow's run context no longer gives {key}"


def test_tag_keys_are_mlflows_system_tags() -> None:
    """rfdist's literal tag keys are the ones MLflow itself writes and reads."""
    tags = importlib.import_module("mlflow.utils.mlflow_tags")  # the reference, in the test only
    from rfdist.tracking import lineage

    assert lineage.USER_TAG == tags.MLFLOW_USER
    assert lineage.GIT_COMMIT_TAG == tags.MLFLOW_GIT_COMMIT
    assert lineage.RUN_NOTE_TAG == tags.MLFLOW_RUN_NOTE
    assert lineage.DATASET_CONTEXT_TAG == tags.MLFLOW_DATASET_CONTEXT


def test_log_dataset_logs_the_input_as_mlflow_log_input_would(tmp_path: Path) -> None:
    """The dataset input (built with public Dataset + to_dict) carries name, digest, source, context."""
    import mlflow

    from rfdist.tracking.lineage import dataset_digest, log_dataset

    data = tmp_path / "data"
    data.mkdir()
    (data / "part-0.parquet").write_bytes(b"not really parquet")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    saved = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        run = client.create_run(client.create_experiment("inputs"))
        digest = log_dataset(run.info.run_id, str(data), name="toy", rows={"train": 7})
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    finally:
        mlflow.set_tracking_uri(saved)
    assert digest == dataset_digest(str(data))
    assert len(inputs) == 1
    dataset, tags = inputs[0].dataset, {t.key: t.value for t in inputs[0].tags}
    assert (dataset.name, dataset.digest) == ("toy", digest)
    assert dataset.source_type == "local" and str(data) in dataset.source
    assert tags == {"mlflow.data.context": "training", "rows.train": "7"}

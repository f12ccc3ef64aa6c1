"""``rfdist.fit``: the distributed path as a Python call returning a result (one small Ray run)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .ray_training import make_data, small_config


def test_import_rfdist_stays_light_and_exports_the_api() -> None:
    """``import rfdist`` must not import torch or ray; the API names load on first use."""
    code = (
        "import sys, rfdist; assert 'fit' in rfdist.__all__ and 'RunConfig' in rfdist.__all__;"
        "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_as_config_takes_a_path_a_dict_or_a_config_with_overrides(tmp_path: Path) -> None:
    from rfdist import RunConfig, load_config
    from rfdist.config import ConfigError
    from rfdist.recipes.api import as_config

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "a", "train": {"max_steps": 7}}))
    assert as_config(path, {"train.lr": 0.01}).train.max_steps == 7
    assert as_config(str(path), ["train.max_steps=9"]).train.max_steps == 9
    from_dict = as_config({"name": "b"}, {"model.flow_hidden": [8, 8], "data.path": "d"})
    assert from_dict.model.flow_hidden == [8, 8] and from_dict.data.synthetic is None
    base = load_config(None, ["name=c"])
    assert isinstance(base, RunConfig) and as_config(base, {"seed": 3}).seed == 3 and base.seed == 0
    with pytest.raises(ConfigError, match=r"train.max_steps"):
        as_config(None, {"train.max_steps": 0})


def test_sweep_refuses_an_empty_search_space_before_ray_starts(
    tmp_path: Path, monkeypatch, ray_tripwire
) -> None:
    """Refused before Ray is started or joined (the tripwire), and nothing is written."""
    import rfdist
    from rfdist.config import ConfigError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"tune.space: empty"):
        rfdist.sweep(None, {"name": "s"})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_fit_trains_on_ray_and_returns_the_result(tmp_path: Path, shared_ray) -> None:
    """20 steps of the small config on one worker: enough for a checkpoint, a run and a version.

    One worker, not the config's two: this tests the API's result, not DDP (two workers are
    tested in test_train_ray_equivalence.py); a second worker is one more actor and a gloo
    rendezvous in each of the fits.
    """
    import rfdist

    data = make_data(str(tmp_path / "vm"), rows=1000)
    cfg = small_config(tmp_path, data, "scaling.num_workers=1", name="api-fit")
    path = tmp_path / "api.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    result = rfdist.fit(path, {"train.max_steps": 20, "train.checkpoint_every": 10})
    assert isinstance(result, rfdist.TrainingResult)
    assert result.metrics["step"] == 20 and result.model_version == "1"
    assert result.model_uri == "models:/api-fit/1" and Path(result.checkpoint_path).is_dir()
    import mlflow

    run = mlflow.MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.max_steps"] == "20"
    again = rfdist.fit(path, {"train.max_steps": 20, "train.checkpoint_every": 10})
    assert again.already_finished and again.run_id == result.run_id
    assert again.model_uri == result.model_uri  # found again, it still names its registered version

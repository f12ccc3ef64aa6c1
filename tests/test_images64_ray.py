"""shapes64 (3×64×64) through the whole system at a CI size: Parquet → 2 Ray Train workers (DDP)
→ MLflow run with sample/reconstruction grids → registered model that loads and scores."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import load_config
from rfdist.core.builders import ModelSpec, build_model
from rfdist.data.reader import load_split, open_dataset
from rfdist.recipes.train import run_training
from rfdist.runtime.checkpoint import load_state
from rfdist.tracking.models import load_model

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "shapes64.yaml"


def test_two_workers_train_shapes64_register_and_reload(tmp_path: Path) -> None:
    data = tmp_path / "shapes64"
    made = CliRunner().invoke(app, ["data", "make", "shapes64", "--out", str(data), "--rows", "40"])
    assert made.exit_code == 0, made.output
    cfg = load_config(
        PRESET,
        [
            f"data.path={data}",
            "model.latent_dim=8",
            "model.conv_hidden=4",
            "model.density_layers=1",
            "model.density_hidden=[8]",
            "train.max_steps=4",
            "train.batch_size=4",  # 2 images per worker
            "train.checkpoint_every=2",
            "train.log_every=2",
            "estimator.chunk_size=4",
            f"storage.path={tmp_path / 'runs'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "registry.name=shapes64-test",
        ],
    )
    assert cfg.scaling.num_workers == 2 and cfg.model.scales == 3
    result = run_training(cfg)
    assert result.metrics["step"] == 4 and result.model_version == "1"

    state = load_state(result.checkpoint_path)
    from_checkpoint = build_model(ModelSpec.from_dict(state.spec))
    from_checkpoint.load_state_dict(state.model)
    registered = load_model("models:/shapes64-test@latest", tracking_uri=result.tracking_uri)
    assert registered.data_shape == (3, 64, 64) and registered.latent_dim == 8
    test = load_split(open_dataset(str(data)), "test")[:3]
    z = torch.logit((test + 0.5) / 256.0)
    with torch.no_grad():
        torch.testing.assert_close(registered.log_prob(z), from_checkpoint.log_prob(z))
        assert registered.sample(2).shape == (2, 3, 64, 64)

    client = mlflow.MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.params["scaling.num_workers"] == "2"
    for key in ("train/loss", "val/nll", "data/wait_s", "perf/step_s", "train/reconstruction"):
        assert key in run.data.metrics, key
    assert {a.path for a in client.list_artifacts(result.run_id, "plots")} == {"plots/model.png"}
    from PIL import Image

    png = client.download_artifacts(result.run_id, "plots/model.png", str(tmp_path))
    with Image.open(png) as picture:  # three panels: samples, data, reconstructions (15 × 5 in)
        assert picture.size[0] >= 2.8 * picture.size[1]

"""Real images end to end in one process: digits → Parquet → logit preprocessing → multiscale flow."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import load_config
from rfdist.recipes.local import load_arrays, run_local

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "digits.yaml"


@pytest.mark.slow
def test_digits_preset_trains_on_logit_images(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["data", "make", "digits", "--out", str(tmp_path / "digits")])
    assert result.exit_code == 0, result.output
    cfg = load_config(PRESET, [f"data.path={tmp_path / 'digits'}", "train.max_steps=10"])
    data = load_arrays(cfg)
    assert data.train.shape[1:] == (1, 8, 8)
    # logit preprocessing: pixel 0 maps near logit(λ) ≈ −13.8, i.e. far below 0
    assert float(data.train.min()) < -5 and float(data.train.max()) > 5
    model, metrics = run_local(cfg, progress=False)
    assert math.isfinite(metrics["test_nll"]) and metrics["skipped_steps"] == 0
    with torch.no_grad():
        assert model.sample(4).shape == (4, 1, 8, 8)

"""Helpers for the Ray Train tests: a small von-mises config on local Parquet, run in-process."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import load_config

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "von-mises.yaml"


def make_data(uri: str, rows: int = 4000) -> str:
    result = CliRunner().invoke(app, ["data", "make", "von-mises", "--out", uri, "--rows", str(rows)])
    assert result.exit_code == 0, result.output
    return uri


def small_config(tmp: Path, data: str, *extra: str, name: str = "vm-test"):
    overrides = [
        f"name={name}",
        f"data.path={data}",
        "data.synthetic=null",
        "train.max_steps=300",
        "train.batch_size=500",
        "train.checkpoint_every=50",
        "train.log_every=25",
        "scaling.num_workers=2",
        f"storage.path={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"registry.name={name}",
        *extra,
    ]
    return load_config(PRESET, overrides)

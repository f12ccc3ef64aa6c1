"""Shared helpers for the (CI-budgeted) training tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from rfdist.config import load_config
from rfdist.recipes.local import run_local

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "rfdist" / "presets"


def train_preset(preset: str, *overrides: str):
    """Train a preset in-process with overrides; returns (model, metrics) and records metrics."""
    cfg = load_config(PRESETS / f"{preset}.yaml", list(overrides))
    model, metrics = run_local(cfg, progress=False)
    record = os.environ.get("RFDIST_TEST_METRICS")
    if record:
        with open(record, "a") as handle:
            handle.write(json.dumps({"preset": preset, "overrides": overrides, **metrics}) + "\n")
    print(preset, overrides, json.dumps(metrics, indent=1))
    return model, metrics

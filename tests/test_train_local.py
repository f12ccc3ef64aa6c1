"""``rfdist train --local``: one process, no Ray and no MLflow; metrics on stdout and in --json."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_local_trains_in_process_and_writes_nothing_else(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rfdist.cli", "train", str(ROOT / "rfdist/presets/von-mises.yaml"), "--local",
         "--set", "train.max_steps=10", "--set", "train.batch_size=100", "--set", "data.train_rows=500",
         "--set", "data.test_rows=200", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text())
    assert math.isfinite(metrics["test_nll"]) and metrics["skipped_steps"] == 0
    assert 0 < metrics["mass"] < 2 and metrics["kl"] >= -1e-3  # KL(true ‖ model) by quadrature
    assert "test_nll" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no mlflow.db, no runs/
    assert "ray" not in proc.stderr.lower()

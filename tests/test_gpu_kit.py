"""The GPU kit: the math and engine run without Ray/MLflow, and ``gpu_check.sh --dry-run`` reports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = {
    "wheels", "env", "pytest-volume", "sync-debug", "data", "train", "ddp", "bench-estimators", "bench-image64",
}  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT), **extra}


@pytest.mark.slow
def test_math_and_engine_import_and_train_without_ray_or_mlflow() -> None:
    """With ``import ray``/``import mlflow`` made to fail, the kit's modules import and train a step."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, "bench")
        from gpu_steps import block_ray_and_mlflow
        block_ray_and_mlflow()
        for name in ("ray", "ray.train", "mlflow"):
            try:
                __import__(name)
            except ImportError:
                pass
            else:
                raise SystemExit(f"{name} was importable: the blocker does not work")
        import torch
        import rfdist.core.volume, rfdist.core.flows, rfdist.core.density, rfdist.core.model, rfdist.core.builders
        import rfdist.core.engine, rfdist.runtime.checkpoint, rfdist.config, rfdist.data.reader, rfdist.recipes.local
        from rfdist import ModelSpec, build_model
        from rfdist.core.engine import LossOptions, train_step
        model = build_model(ModelSpec(data_shape=(4,), latent_dim=2, flow_hidden=(8,)))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        result = train_step(model, opt, torch.randn(16, 4), LossOptions(estimator="hutchinson"))
        assert not result.skipped and result.metrics["loss"] == result.metrics["loss"]
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "mlflow"))
        assert not leaked, leaked
        print("ok", result.metrics["loss"])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ")


@pytest.mark.slow
def test_gpu_check_dry_run_passes_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = _env(OUT=str(out), PYTHON=sys.executable, RFDIST_KIT_DATA=str(tmp_path / "no-carried-data"))
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["dry_run"] is True and report["device"] == "cpu" and report["passed"] is True
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == CHECKS
    for check in checks.values():
        assert check["seconds"] >= 0
        if check["passed"] is None:  # skipped: only with a reason
            assert isinstance(check.get("skipped"), str) and check["skipped"]
        else:
            assert check["passed"] is True, check
    assert checks["sync-debug"]["passed"] is None  # CUDA-only
    assert checks["pytest-volume"]["figures"]["tests"] > 0
    assert checks["data"]["figures"]["rows"]["train"] > 0  # written by this run (no carried data)
    train = checks["train"]["figures"]
    assert train["test_nll_logit_after"] < train["test_nll_logit_before"]
    assert train["reload_max_abs_diff"] <= 1e-4 * abs(train["test_nll_logit_after"])
    ddp = checks["ddp"]["figures"]
    assert ddp["world_size"] == 2 and ddp["weight_max_diff_across_ranks"] == 0.0
    assert checks["bench-estimators"]["figures"]["rows"]
    log = (out / "gpu_check.log").read_text()
    assert "===== train" in log and "===== ddp" in log
    assert len(list(out.iterdir())) <= 8  # what the device tool brings back


def _load_kit():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in state  # a zombie is dead, only not yet reaped


def test_a_hanging_check_is_killed_with_its_children(tmp_path: Path) -> None:
    """The time box kills the check's whole process group, grandchildren included (e.g. torchrun's)."""
    import argparse

    kit = _load_kit().Kit(argparse.Namespace(dry_run=True, out=str(tmp_path / "out"), budget=60.0))
    pid_file = tmp_path / "child.pid"
    rc, _, seconds = kit.run(
        "env", ["bash", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pid_file}; wait"], timeout=2
    )
    assert rc == 124
    child = int(pid_file.read_text())
    assert not _alive(child)
    kit.record("env", seconds, {"passed": False, "error": _load_kit()._why(rc, kit.work / "env.log")})
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["checks"][0]["error"].startswith("timed out")
    shutil.rmtree(kit.work)


def test_checks_after_a_spent_budget_are_reported_not_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--dry-run", "--budget", "6", "--out", str(out)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    checks = {c["name"]: c for c in json.loads((out / "gpu_check.json").read_text())["checks"]}
    assert set(checks) == CHECKS  # every check is still listed
    assert "budget was spent" in checks["bench-estimators"]["error"]

"""Bad configs: one clear line before anything starts, non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rfdist.config import ConfigError, load_config

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "von-mises.yaml"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("estimator.bogus=1", "estimator.bogus: unknown key"),
        ("train.max_steps=many", "train.max_steps"),
        ("estimator.num_samples=0", "estimator.num_samples"),
        ("estimator.cg_tol=-0.1", "estimator.cg_tol"),
        ("estimator.name=magic", "estimator.name"),
        ("train.manifold_steps=100", "train.manifold_steps=100 needs train.mode=two_step"),
        ("scaling.num_workers=[2,1]", "scaling.num_workers: expected a worker count >= 1 or"),
        ("scaling.num_workers=[1,2,3]", "scaling.num_workers: expected a worker count"),
        ("scaling.num_workers=0", "scaling.num_workers: expected a worker count"),
        ("scaling.gpus_per_worker=0.5", "scaling: gpus_per_worker=0.5 needs use_gpu=true"),
        ("scaling.resources_per_worker={GPU: 1}", "scaling.resources_per_worker: GPU: set scaling.gpus_per_worker"),
    ],
)
def test_bad_values_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_config(PRESET, [override])


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rfdist.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["foo=1"], "foo: unknown key"),
        (["train.lr=fast"], "train.lr"),
        (["model.latent_dim=2"], "model.latent_dim: must be smaller than the data dimension D=2"),
        (["estimator.num_samples=0"], "estimator.num_samples"),
        (["estimator.cg_tol=-1"], "estimator.cg_tol"),
        (["model.data_dim=3"], "model expects D=3 but the dataset has D=2"),
        (["model.flow=multiscale"], "model.flow: 'multiscale' needs image rows"),
    ],
)
def test_train_refuses_bad_configs_before_any_worker_starts(tmp_path: Path, overrides, expected) -> None:
    args = ["train", str(PRESET)]
    for item in overrides:
        args += ["--set", item]
    args += [
        "--set",
        f"storage.path={tmp_path / 'runs'}",
        "--set",
        f"tracking.uri=sqlite:///{tmp_path / 'db'}",
    ]
    proc = _cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing was started or written


def test_missing_config_file() -> None:
    proc = _cli("train", "/nonexistent.yaml")
    assert proc.returncode == 2 and "config file not found: /nonexistent.yaml" in proc.stderr


def test_later_data_source_wins_over_the_presets() -> None:
    """``--set data.path=…`` on a preset naming ``data.synthetic`` (and back) needs nothing else."""
    cfg = load_config(PRESET, ["data.path=data/mine"])
    assert (cfg.data.path, cfg.data.synthetic) == ("data/mine", None)
    assert cfg.model_dump()["data"]["synthetic"] is None  # the resolved config says so
    cfg = load_config(PRESET, ["data.path=data/mine", "data.synthetic=sphere"])
    assert (cfg.data.path, cfg.data.synthetic) == (None, "sphere")
    with pytest.raises(ConfigError, match=r"exactly one of data\.path"):
        load_config(PRESET, ["data.synthetic=null"])  # removing the only source is still refused


def test_scaling_knobs_reach_ray_trains_scaling_config() -> None:
    """Fractional GPUs, extra per-worker resources and elastic [min, max] workers pass through
    to the ``ray.train.ScalingConfig`` the trainer is built with (no Ray instance needed)."""
    from rfdist.recipes.train import scaling_config

    cfg = load_config(
        PRESET,
        ["scaling.num_workers=[1,2]", "scaling.use_gpu=true", "scaling.gpus_per_worker=0.25",
         "scaling.cpus_per_worker=0.5", "scaling.resources_per_worker={memory: 1000000}", "train.batch_size=8"],
    )  # fmt: skip
    assert (cfg.scaling.min_workers, cfg.scaling.max_workers) == (1, 2)
    built = scaling_config(cfg)
    assert tuple(built.num_workers) == (1, 2) and built.use_gpu
    assert built.resources_per_worker == {"CPU": 0.5, "GPU": 0.25, "memory": 1000000}
    assert load_config(PRESET, ["scaling.num_workers=[3,3]"]).scaling.num_workers == 3  # min == max: fixed
    from rfdist.recipes.preflight import check_config

    with pytest.raises(ConfigError, match=r"train\.batch_size: 1 is smaller than scaling\.num_workers=2"):
        check_config(load_config(PRESET, ["scaling.num_workers=[1,2]", "train.batch_size=1"]))

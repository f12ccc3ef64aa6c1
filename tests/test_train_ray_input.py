"""What only a real Ray Train run can show: a finished run is not retrained, a corrupt newest
checkpoint is skipped, non-finite data is named once, empty shards cannot hang a worker.

The worker's shared local Ray serves them (``run_training`` reuses it); runs are a few
dozen steps of the von Mises preset on one worker.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import ray
from typer.testing import CliRunner

from rfdist.cli.main import app
from rfdist.config import load_config
from rfdist.recipes.train import TrainingError, run_training

from .ray_training import PRESET, make_data

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("shared_ray")]


def _overrides(tmp: Path, data: str, name: str, *extra: str) -> list[str]:
    return [
        f"name={name}",
        f"data.path={data}",
        "data.synthetic=null",
        "train.max_steps=40",
        "train.batch_size=250",
        "train.checkpoint_every=20",
        "train.log_every=20",
        "scaling.num_workers=1",
        "storage.keep=5",
        "storage.max_failures=0",
        f"storage.path={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
        f"registry.name={name}",
        *extra,
    ]


def _cli(overrides: list[str], *flags: str):
    args = ["train", str(PRESET), *flags]
    for item in overrides:
        args += ["--set", item]
    return CliRunner().invoke(app, args)


def _runs(tmp: Path, name: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rfdist")
    return client.search_runs([experiment.experiment_id], f"attributes.run_name = '{name}'")


def _versions(tmp: Path, name: str) -> list[str]:
    client = mlflow.MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    return sorted(str(v.version) for v in client.search_model_versions(f"name='{name}'"))


def test_finished_run_is_not_retrained_corrupt_checkpoint_falls_back_force_retrains(
    tmp_path: Path, capfd
) -> None:
    data = make_data(str(tmp_path / "vm"), rows=2000)
    name = "vm-done"
    first = run_training(load_config(PRESET, _overrides(tmp_path, data, name)))
    assert first.metrics["step"] == 40 and first.model_version == "1"

    # 1. the same command again: says so, exit 0, no new MLflow run, no new model version
    again = _cli(_overrides(tmp_path, data, name))
    assert again.exit_code == 0, again.output
    assert f"run '{name}' already finished at step 40" in again.output
    assert len(_runs(tmp_path, name)) == 1 and _versions(tmp_path, name) == ["1"]

    # 2. a truncated newest state.pt: warn naming it, resume from the newest good one (step 20)
    folders = sorted(p for p in (tmp_path / "runs" / name).glob("checkpoint_*") if p.is_dir())
    assert len(folders) == 2
    newest = folders[-1] / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    capfd.readouterr()
    longer = run_training(load_config(PRESET, _overrides(tmp_path, data, name, "train.max_steps=60")))
    text = "".join(capfd.readouterr())
    assert f"warning: checkpoint {folders[-1]}/state.pt is unreadable" in text
    warnings = {  # the message itself, without Ray's "(RayTrainWorker pid=…)" prefix and colours
        line[line.index("warning: checkpoint") :]
        for line in text.splitlines()
        if "warning: checkpoint" in line
    }
    assert all(f"{folders[-1]}/state.pt is unreadable" in w for w in warnings), warnings  # only that one
    assert "resumed from checkpoint at step 20" in text
    assert longer.metrics["step"] == 60 and longer.model_version == "2"

    # 3. --force: a fresh run from step 0 in its own checkpoint folder, a new version
    capfd.readouterr()
    forced = _cli(_overrides(tmp_path, data, name, "train.max_steps=60"), "--force")
    text = "".join(capfd.readouterr()) + forced.output
    assert forced.exit_code == 0, forced.output
    assert "resumed from checkpoint" not in text and "already finished" not in text
    runs = _runs(tmp_path, name)
    assert len(runs) == 3 and _versions(tmp_path, name) == ["1", "2", "3"]
    assert all(r.info.status == "FINISHED" for r in runs)  # nothing left RUNNING
    ray_names = {r.data.tags.get("rfdist.ray_name") for r in runs}
    assert name in ray_names and len(ray_names) == 2


def test_non_finite_data_is_named_once_and_no_checkpoint_is_claimed(tmp_path: Path) -> None:
    """Values the preflight's sample cannot see (injected into every batch in the worker) fail the
    run once, naming the data: not retried although ``storage.max_failures=1``."""
    from .hooks import Poison

    data = make_data(str(tmp_path / "vm"), rows=2000)
    name = "vm-huge"
    cfg = load_config(PRESET, _overrides(tmp_path, data, name, "train.max_consecutive_skips=3",
                                         "storage.max_failures=1"))  # fmt: skip
    with pytest.raises(TrainingError) as caught:
        run_training(cfg, worker_hooks=[Poison(1e30, None, tmp_path / "hook")])
    line = str(caught.value)
    assert "\n" not in line and line.count("FloatingPointError") == 1, line
    assert f"rfdist data validate {data}" in line and "no checkpoint was written" in line
    assert "checkpoint is kept" not in line
    assert (tmp_path / "hook" / "starts").read_text().count("start") == 1  # deterministic: no retry
    runs = _runs(tmp_path, name)
    assert [r.info.status for r in runs] == ["FAILED"] and _versions(tmp_path, name) == []


def test_skipped_steps_are_named_and_never_champion(tmp_path: Path, capfd) -> None:
    """One batch of NaN (past the preflight's sample): the first skipped step names the batch row,
    the version is registered without ``champion``, with one warning line."""
    from .hooks import Poison

    data = make_data(str(tmp_path / "vm"), rows=2000)
    name = "vm-nan"
    cfg = load_config(PRESET, _overrides(tmp_path, data, name, "train.max_steps=6",
                                         "train.checkpoint_every=6", "train.log_every=3"))  # fmt: skip
    result = run_training(cfg, worker_hooks=[Poison(float("nan"), {1}, tmp_path / "hook")])
    text = "".join(capfd.readouterr())
    assert result.model_version == "1" and result.aliases == [], result
    assert "step 2 skipped (non-finite loss or gradient): row 0 of worker 0's batch" in text, text
    assert f"{name} v1 is registered without the champion alias" in text
    assert "(1 skipped)" in text and "loss nan" not in text
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_model_version(name, "1").tags.get("rfdist.skipped_steps") == "1"
    assert _runs(tmp_path, name)[0].data.tags.get("rfdist.first_skipped_step") == "2"


def test_empty_train_or_val_shards_fail_instead_of_hanging(tmp_path: Path) -> None:
    """The worker-side guards, for shards the driver's row counts cannot see (datasets passed in)."""
    from rfdist.runtime.datasets import prepare_data, ray_datasets

    data = make_data(str(tmp_path / "vm"), rows=2000)
    empty = ray.data.from_items([])
    for split, expected in (("train", "no full batch of 250 rows"), ("val", "val split gave no rows")):
        cfg = load_config(PRESET, _overrides(tmp_path, data, f"vm-empty-{split}", "train.max_steps=5",
                                             "train.checkpoint_every=5"))  # fmt: skip
        datasets = ray_datasets(cfg, prepare_data(cfg))
        datasets[split] = empty
        with pytest.raises(TrainingError, match=expected) as caught:
            run_training(cfg, datasets=datasets)
        assert "\n" not in str(caught.value)
        assert [r.info.status for r in _runs(tmp_path, cfg.name)] == ["FAILED"]

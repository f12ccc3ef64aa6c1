"""scripts/reproduce.py's results page: commands a stranger can run (no absolute paths)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "jobs" / "configs" / "paper" / "cpu.yaml"
ABSOLUTE = re.compile(r"(?<![\w.~:/])/[\w.-]+/|sqlite:////")


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce_script", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(variant: str, seed: int, command: str, overrides: list[str], kl: float) -> dict:
    return {"experiment": "von-mises", "variant": variant, "seed": seed, "command": command,
            "model_uri": "runs:/0123abcd/model", "overrides": overrides, "date": "2026-11-29",
            "metrics": {"test_nll": 1.7, "kl": kl}}  # fmt: skip


def test_report_commands_have_no_absolute_paths(reproduce, tmp_path, monkeypatch) -> None:
    # Records as a scratch folder wrote them: absolute sqlite stores of another checkout, and a
    # hand-made command with an absolute path under the working directory.
    monkeypatch.chdir(tmp_path)
    scratch = (
        "python scripts/reproduce.py jobs/configs/paper/cpu.yaml --only von-mises --seeds 0,1 "
        "--tracking-uri sqlite:////work/wt-7/runs/paper/mlflow-a.db --runs docs/cpu-runs.jsonl --out runs/x.md"
    )
    extra = scratch + " --set train.batch_size=10 --ray"
    hand = (
        f"rfdist eval runs:/0123abcd/model --data {tmp_path}/data/vm --tracking-uri sqlite:///{tmp_path}/m.db"
    )
    base = ["train.max_steps=600"]
    records = [
        _record("exact", 0, scratch, [*base, "estimator.name=exact", "seed=0", "name=a"], 0.1),
        _record("exact", 1, scratch, [*base, "estimator.name=exact", "seed=1", "name=b"], 0.3),
        _record(
            "two-step",
            0,
            extra,
            [*base, "train.mode=two_step", "train.batch_size=10", "seed=0", "name=c"],
            2.0,
        ),
        {**_record("hutchinson-k1", 0, hand, [], 0.05), "date": "2026-11-30"},
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (
        reproduce.main([str(PLAN), "--report-only", "--runs", "runs.jsonl", "--out", "out/results.md"]) == 0
    )
    text = (tmp_path / "out" / "results.md").read_text()

    assert not ABSOLUTE.search(text), ABSOLUTE.search(text)
    commands = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    assert (
        "python scripts/reproduce.py jobs/configs/paper/cpu.yaml --only von-mises --seeds 0,1 --variant exact "
        "--tracking-uri sqlite:///runs/paper/mlflow.db --runs runs/paper/von-mises-runs.jsonl "
        "--out runs/paper/von-mises.md"
    ) in commands
    assert any("--variant two-step --set train.batch_size=10 --ray --tracking-uri" in c for c in commands)
    assert "rfdist eval runs:/0123abcd/model --data data/vm --tracking-uri sqlite:///m.db" in commands
    assert "Measured on 2026-11-29, 2026-11-30." in text
    assert (  # an experiment of the plan without runs is listed with its command
        "- `sphere`: `python scripts/reproduce.py jobs/configs/paper/cpu.yaml --only sphere "
        "--tracking-uri sqlite:///runs/paper/mlflow.db --runs runs/paper/sphere-runs.jsonl "
        "--out runs/paper/sphere.md`"
    ) in text
    assert "| exact | 0,1 | 1.7 ± 0 | 0.2 ± 0.14 |" in text  # the numbers themselves are untouched


def test_portable_rewrites_only_paths_under_the_roots(reproduce, tmp_path) -> None:
    text = f"a sqlite:///{tmp_path}/runs/m.db b {tmp_path}/docs/x.md c /elsewhere/y runs:/abc/model"
    assert (
        reproduce.portable(text, [tmp_path])
        == "a sqlite:///runs/m.db b docs/x.md c /elsewhere/y runs:/abc/model"
    )


def test_step_timing_reads_rank0_history_and_skips_the_first_window(reproduce, tmp_path) -> None:
    # A real sqlite MLflow store with the history a Ray Train run logs every train.log_every steps:
    # the first window (pipeline start) is slow and must not count.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("timing")).info.run_id
    for step, (step_s, wait_s) in zip((10, 20, 30), ((5.0, 2.0), (1.0, 0.01), (3.0, 0.03)), strict=True):
        client.log_metric(run_id, "perf/step_s", step_s, step=step)
        client.log_metric(run_id, "data/wait_s", wait_s, step=step)
    timing = reproduce.step_timing(client, run_id)
    assert timing["step_seconds"] == pytest.approx(2.0)
    assert timing["data_wait_fraction"] == pytest.approx(0.02 / 2.0)
    empty = client.create_run(client.get_experiment_by_name("timing").experiment_id).info.run_id
    assert reproduce.step_timing(client, empty) == {}

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
        {**_record("hutchinson-k4", 2, hand, [], 0.2), "model_uri": "models:/vm-k4/3"},
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
    # A registered model's re-evaluation: the plan's eval options (non-default ones) and its seed.
    assert (
        "rfdist eval models:/vm-k4/3 --data synthetic:von-mises --max-rows 5000 --seed 2 "
        "--tracking-uri sqlite:///runs/paper/mlflow.db"
    ) in commands
    assert sum(c.startswith("rfdist eval models:/") for c in commands) == 1  # runs:/ URIs are not listed


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


@pytest.mark.slow
def test_eval_command_reproduces_the_recorded_numbers(reproduce, tmp_path, monkeypatch) -> None:
    # reproduce.py trains and evaluates a small run into the page's relative store; the page's
    # `rfdist eval` command, run as a user would (a new process, the CLI), must give its numbers.
    import shlex
    import subprocess
    import sys

    import yaml

    monkeypatch.chdir(tmp_path)
    exp = {
        "config": "rfdist/presets/von-mises.yaml",
        "set": ["train.max_steps=30", "train.batch_size=200"],
        "variants": {"two-step": ["train.mode=two_step"]},
        "eval": {"data": "synthetic:von-mises", "max_rows": 400, "fd_samples": 300, "ood_train_rows": 200,
                 "progress": False},
        "report": ["test_nll", "kl"],
    }  # fmt: skip
    (tmp_path / "plan.yaml").write_text(
        yaml.safe_dump({"seeds": [1], "threads": 1, "experiments": {"tiny": exp}})
    )
    argv = ["plan.yaml", "--tracking-uri", reproduce.TRACKING_URI, "--runs", "runs.jsonl", "--out", "page.md"]
    assert reproduce.main(argv) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    command = reproduce.eval_command(exp, record)
    assert command.startswith(f"rfdist eval {record['model_uri']} --data synthetic:von-mises ")
    assert "--max-rows 400 --ood-train-rows 200 --fd-samples 300 --seed 1 " in command

    args = [*shlex.split(command)[1:], "--json", "again.json"]
    done = subprocess.run(
        [sys.executable, "-m", "rfdist.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads((tmp_path / "again.json").read_text())
    again = again.get("metrics", again)
    timing = {"train_seconds", "step_seconds", "eval_seconds"}
    recorded = {k: v for k, v in record["metrics"].items() if k not in timing}
    assert {"test_nll", "kl", "fd_raw"} <= recorded.keys()
    for key, value in recorded.items():
        assert again[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("plan_name", ["cpu.yaml", "gpu.yaml"])
def test_every_planned_run_is_a_valid_config(reproduce, plan_name) -> None:
    # A typo in a plan's overrides would otherwise surface after the hour-long runs before it.
    import yaml

    from rfdist.config import load_config

    plan = yaml.safe_load((PLAN.parent / plan_name).read_text())
    loaded = 0
    for name, exp in plan["experiments"].items():
        for variant, overrides in exp["variants"].items():
            cfg = load_config(
                ROOT / exp["config"], [*exp.get("set", []), *overrides, "seed=0", f"name={name}"]
            )
            reproduce.EvalOptions(**{**exp.get("eval", {}), "seed": 0})  # the eval section's keys too
            assert cfg.name == name, variant
            loaded += 1
    assert loaded >= len(plan["experiments"])


def test_welch_interval_and_p_value_by_the_formula(reproduce) -> None:
    """Welch–Satterthwaite by hand: the difference, its 95 % interval and the two-sided p."""
    import math

    from scipy.stats import t as student

    a, b = [1.0, 2.0, 3.5], [0.5, 0.7, 0.2, 0.9]
    ma, mb = sum(a) / 3, sum(b) / 4
    va = sum((x - ma) ** 2 for x in a) / 2
    vb = sum((x - mb) ** 2 for x in b) / 3
    se2 = va / 3 + vb / 4
    df = se2**2 / ((va / 3) ** 2 / 2 + (vb / 4) ** 2 / 3)
    half = student.ppf(0.975, df) * math.sqrt(se2)
    tstat = (ma - mb) / math.sqrt(se2)
    got = reproduce.welch(a, b)
    assert got["diff"] == pytest.approx(ma - mb)
    assert (got["low"], got["high"]) == pytest.approx((ma - mb - half, ma - mb + half))
    assert got["p"] == pytest.approx(2 * student.sf(abs(tstat), df))
    assert math.isnan(reproduce.welch([1.0], b)["low"])  # one seed: no interval


def test_report_lists_the_planned_comparisons(reproduce, tmp_path) -> None:
    import yaml

    plan = {"experiments": {"vm": {
        "config": "rfdist/presets/von-mises.yaml", "variants": {"exact": [], "two-step": []}, "report": ["kl"],
        "compare": {"metrics": ["kl"], "pairs": [["exact", "two-step"]]},
    }}}  # fmt: skip
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump(plan))
    rows = [
        {"experiment": "vm", "variant": v, "seed": s, "metrics": {"kl": k}, "model_uri": "runs:/x/model"}
        for v, ks in (("exact", [0.1, 0.2, 0.15]), ("two-step", [1.0, 2.0, 1.6]))
        for s, k in enumerate(ks)
    ]
    text = reproduce.report(plan, rows, tmp_path / "out.md", "python scripts/reproduce.py plan.yaml")
    line = next(x for x in text.splitlines() if x.startswith("| exact | two-step | kl |"))
    got = reproduce.welch([0.1, 0.2, 0.15], [1.0, 2.0, 1.6])
    assert f"| {got['diff']:.3g} | [{got['low']:.3g}, {got['high']:.3g}] | {got['p']:.2g} | 3, 3 |" in line
    assert got["high"] < 0

"""Metric names: rank 0's series reach MLflow under the UI's namespaces (real sqlite store), and
Tune, checkpoints and MLflow use one name per quantity."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pytest
import torch

from rfdist.config import ConfigError, load_config
from rfdist.tracking.metric_log import MetricLogger
from rfdist.tracking.metric_names import COST_KEYS, SKIPPED_STEPS, VAL_NLL, report_value

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "von-mises.yaml"


def test_per_step_series_are_namespaced_and_keep_their_steps(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("names")).info.run_id
    log = MetricLogger(uri, run_id)
    log({"loss": 1.5, "grad_norm": 0.3, "step_s": 0.02, "data_wait_s": 0.001, "cg_residual": 1e-3}, 10)
    log({"val_nll": 2.25, "auto_exact_s": 0.5}, 20)
    log.close()
    metrics = client.get_run(run_id).data.metrics
    assert metrics == {
        "train/loss": 1.5,
        "train/grad_norm": 0.3,
        "perf/step_s": 0.02,
        "data/wait_s": 0.001,
        "perf/cg_residual": 1e-3,
        "val/nll": 2.25,
        "perf/auto_exact_s": 0.5,
    }
    assert [m.step for m in client.get_metric_history(run_id, "val/nll")] == [20]


def test_tune_metric_takes_the_mlflow_names_and_reads_the_old_flat_ones_with_a_warning() -> None:
    assert load_config(PRESET).tune.metric == "val/nll"
    assert load_config(PRESET, ["tune.metric=perf/s_per_step"]).tune.metric == "perf/s_per_step"
    with pytest.warns(FutureWarning, match="'s_per_step' is now called 'perf/s_per_step'"):
        assert load_config(PRESET, ["tune.metric=s_per_step"]).tune.metric == "perf/s_per_step"
    with pytest.raises(ConfigError, match=r"tune\.metric"):
        load_config(PRESET, ["tune.metric=val_loss"])


def test_tune_metric_choices_are_names_a_trial_reports() -> None:
    from typing import get_args

    from rfdist.config import TuneConfig
    from rfdist.recipes.sweep import TRIAL_METRICS

    choices = set(get_args(TuneConfig.model_fields["metric"].annotation))
    assert choices <= set(TRIAL_METRICS) and choices <= {VAL_NLL, *COST_KEYS}


def test_a_checkpoint_with_the_old_flat_names_resumes_its_cost_and_val_nll() -> None:
    from rfdist.runtime.worker import _CostMeter

    old = {"val_nll": 1.25, "cost_steps": 10.0, "train_time_s": 2.0, "matvecs_per_step": 4.0,
           "tangent_passes_per_step": 6.0, "skipped_steps": 1.0}  # fmt: skip
    meter = _CostMeter(torch.device("cpu"), previous=old)
    meter.add({"step_s": 1.0, "matvecs": 15.0, "tangent_passes": 17.0})
    summary = meter.summary()
    assert summary["perf/cost_steps"] == 11 and summary["perf/train_time_s"] == 3.0
    assert summary["perf/matvecs_per_step"] == (4.0 * 10 + 15.0) / 11
    assert summary["perf/tangent_passes_per_step"] == (6.0 * 10 + 17.0) / 11
    assert report_value(old, VAL_NLL) == 1.25 and report_value(old, SKIPPED_STEPS) == 1.0
    assert report_value({VAL_NLL: 0.5, "val_nll": 9.0}, VAL_NLL) == 0.5  # the new name wins
    assert math.isnan(report_value({}, VAL_NLL))


def test_a_trial_summary_speaks_the_names_tune_and_mlflow_use() -> None:
    from rfdist.recipes.sweep import SUMMARY_COLUMNS, TrialSummary

    trial = TrialSummary(trial="t_00000", params={"train.lr": 0.01}, status="completed", steps=40,
                         val_nll=1.5, best_val_nll=1.4, s_per_step=0.02, matvecs_per_step=4.0,
                         tangent_passes_per_step=6.0, peak_mem_mb=300.0, train_time_s=0.8)  # fmt: skip
    assert trial.metrics == {"val/nll": 1.5, "perf/s_per_step": 0.02, "perf/matvecs_per_step": 4.0,
                             "perf/tangent_passes_per_step": 6.0, "perf/peak_mem_mb": 300.0,
                             "perf/train_time_s": 0.8}  # fmt: skip
    assert trial.value("perf/s_per_step") == 0.02 and trial.value(VAL_NLL) == 1.5
    row = trial.row()
    assert list(row)[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS) and row["param:train.lr"] == 0.01
    assert row["val/nll"] == 1.5 and row["best_val_nll"] == 1.4 and row["steps"] == 40

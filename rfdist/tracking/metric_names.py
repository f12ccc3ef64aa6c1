"""MLflow keys of a training run's time series, in namespaces the MLflow UI groups by.

Rank 0 logs every per-step series under a prefix, so the run page shows four short groups
instead of one long flat list: ``train/…`` (the objective and its parts, gradient norm, learning
rate, skipped steps), ``val/…`` (validation NLL), ``perf/…`` (step time, throughput, the volume
term's CG iterations, matvecs and tangent passes, the ``estimator: auto`` timings) and
``data/…`` (time waiting for the next batch). System metrics keep MLflow's own ``system/…``.

What a run reports to Ray Train and Tune at each checkpoint carries the same names as its MLflow
series: ``val/nll`` (what Tune's ``metric`` names by default and what checkpoints are ranked by),
``train/skipped_steps`` and the run's cost so far, ``perf/s_per_step``, ``perf/matvecs_per_step``,
``perf/tangent_passes_per_step``, ``perf/peak_mem_mb``, ``perf/train_time_s`` — a sweep trial's
MLflow run holds them under those keys too. One quantity, one name, wherever it is read.
Headline numbers stay flat: ``final_val_nll`` (the registry's champion metric), a sweep's
``best_val_nll`` and ``rfdist eval``'s ``test_*``.

Example::

    >>> mlflow_key("loss"), mlflow_key("val_nll"), mlflow_key("step_s"), mlflow_key("data_wait_s")
    ('train/loss', 'val/nll', 'perf/step_s', 'data/wait_s')
    >>> mlflow_key("s_per_step"), report_value({"val_nll": 1.5}, VAL_NLL)  # a checkpoint's old name
    ('perf/s_per_step', 1.5)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = ["COST_KEYS", "LEGACY_NAMES", "SKIPPED_STEPS", "VAL_NLL", "mlflow_key", "report_value"]

_PERF = {
    "step_s",
    "examples_per_s",
    "matvecs",
    "tangent_passes",
    "cg_iterations",
    "cg_max_iterations",
    "cg_residual",
    "precond_tangent_rows",
    "peak_mem_mb",
    "cost_steps",
    "s_per_step",
    "matvecs_per_step",
    "tangent_passes_per_step",
    "train_time_s",
}
_RENAMED = {"data_wait_s": "data/wait_s", "val_nll": "val/nll"}


def mlflow_key(name: str) -> str:
    """The namespaced MLflow key of per-step series ``name`` (already namespaced keys pass through)."""
    if "/" in name:
        return name
    if name in _RENAMED:
        return _RENAMED[name]
    if name in _PERF or name.startswith("auto_"):
        return f"perf/{name}"
    if name.startswith("val_"):
        return f"val/{name[4:]}"
    return f"train/{name}"


#: The validation NLL's name in Ray Train/Tune reports, checkpoints and MLflow.
VAL_NLL = "val/nll"
#: The running count of skipped (non-finite) steps.
SKIPPED_STEPS = "train/skipped_steps"
#: A run's cost so far, reported at each checkpoint (a sweep's trade-off axes).
COST_KEYS = (
    "perf/s_per_step",
    "perf/matvecs_per_step",
    "perf/tangent_passes_per_step",
    "perf/peak_mem_mb",
    "perf/train_time_s",
)
#: The flat names reports used before they took their MLflow names: ``{old: new}``.
LEGACY_NAMES = {
    "val_nll": VAL_NLL,
    "skipped_steps": SKIPPED_STEPS,
    "cost_steps": "perf/cost_steps",
    **{key.split("/", 1)[1]: key for key in COST_KEYS},
}
_OLD_NAME = {new: old for old, new in LEGACY_NAMES.items()}


def report_value(metrics: Mapping[str, object], key: str, default: float = math.nan) -> float:
    """``metrics[key]`` as a float, falling back to its old flat name (checkpoints from before the rename)."""
    for name in (key, _OLD_NAME.get(key)):
        if name is not None and metrics.get(name) is not None:
            return float(metrics[name])  # type: ignore[arg-type]
    return default

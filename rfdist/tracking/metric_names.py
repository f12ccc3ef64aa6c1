"""MLflow keys of a training run's time series, in namespaces the MLflow UI groups by.

Rank 0 logs every per-step series under a prefix, so the run page shows four short groups
instead of one long flat list: ``train/…`` (the objective and its parts, gradient norm, learning
rate, skipped steps), ``val/…`` (validation NLL), ``perf/…`` (step time, throughput, the volume
term's CG iterations, matvecs and tangent passes, the ``estimator: auto`` timings) and
``data/…`` (time waiting for the next batch). System metrics keep MLflow's own ``system/…``.

Headline numbers logged once per run stay flat because registry logic, sweeps and the runs
table compare them across runs: ``final_val_nll`` (the champion's metric), a sweep trial's
``s_per_step``/``matvecs_per_step``/``peak_mem_mb``/``train_time_s``, and ``rfdist eval``'s
``test_*``. Ray Train/Tune report keys are unchanged (``val_nll`` is what Tune's ``metric``
names).

Example::

    >>> mlflow_key("loss"), mlflow_key("val_nll"), mlflow_key("step_s"), mlflow_key("data_wait_s")
    ('train/loss', 'val/nll', 'perf/step_s', 'data/wait_s')
"""

from __future__ import annotations

__all__ = ["mlflow_key"]

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

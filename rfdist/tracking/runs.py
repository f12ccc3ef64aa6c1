"""MLflow runs: finding the runs rfdist made (by name, by parent) and quoting filter values.

A training job and a sweep find their runs the same way: in the experiment
:func:`experiment_for` names (the config's, else ``MLFLOW_EXPERIMENT_NAME``), by the tags
rfdist sets on them: a training run by its MLflow run name (``mlflow.runName``, the config's
``name``) and tag ``rfdist.storage``; a sweep's parent run by ``rfdist.sweep_name`` and ``rfdist.storage``.
A sweep's trials are child runs (``mlflow.parentRunId``) in the same experiment as their parent.

No run is left RUNNING: a driver runs everything after its run opens inside
:func:`closed_on_failure`, which closes the run FAILED (any error) or KILLED (Ctrl-C, SIGTERM —
``rfdist jobs stop`` — or an exit) with the reason in the tag :data:`FAILURE_TAG`;
:func:`stop_signals` turns SIGTERM into :class:`RunStopped` so that it is seen. A re-run that
resumes such a run sets it RUNNING again and drops the tag.
"""

from __future__ import annotations

import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rfdist.config import ConfigError, RunConfig

__all__ = [
    "FAILURE_TAG",
    "RunStopped",
    "child_runs",
    "close_run",
    "closed_on_failure",
    "experiment_for",
    "filter_value",
    "finished_step",
    "latest_run",
    "log_params",
    "open_parent_run",
    "open_run",
    "stop_signals",
]

FAILURE_TAG = "rfdist.failure"
"""Tag of a FAILED/KILLED run: why it ended (one line)."""


class RunStopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM: ``rfdist jobs stop``, a scheduler, ``kill``)."""


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within: SIGTERM raises :class:`RunStopped` in the main thread (elsewhere: nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise RunStopped(f"stopped by {signal.Signals(signum).name} (rfdist jobs stop, or kill)")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def close_run(client: Any, run_id: str, status: str, reason: str) -> None:
    """End ``run_id`` as ``status`` (FAILED/KILLED) with ``reason`` in :data:`FAILURE_TAG`.

    Best effort: the run's own error matters more than a tracking store that is down too.
    """
    try:
        client.set_tag(
            run_id, FAILURE_TAG, reason.strip().splitlines()[0][:500] if reason.strip() else status
        )
        client.set_terminated(run_id, status=status)
    except Exception as exc:
        print(f"[rfdist] warning: could not mark MLflow run {run_id} {status}: {type(exc).__name__}: "
              f"{str(exc)[:200]}", file=sys.stderr, flush=True)  # fmt: skip


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}".rstrip(": ")


@contextmanager
def closed_on_failure(
    client: Any,
    run_id: str,
    describe: Callable[[BaseException], str] | None = None,
    stopped: tuple[type[BaseException], ...] = (),
) -> Iterator[None]:
    """Close ``run_id`` FAILED (an error) or KILLED (interrupt, stop signal, exit, ``stopped``) if the block raises.

    ``describe`` turns an error into the tag's one line (default ``Type: last line``).
    ``stopped``: more exception types that mean "stopped, resumable" (their message is the tag).
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit, *stopped) as exc:
        if isinstance(exc, (RunStopped, *stopped)):
            why = str(exc)
        else:
            why = "exited" if isinstance(exc, SystemExit) else "interrupted (Ctrl-C)"
        close_run(client, run_id, "KILLED", why)
        raise
    except BaseException as exc:
        close_run(client, run_id, "FAILED", (describe or _reason)(exc))
        raise


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``'…'``, or ``"…"`` when it holds a ``'``).

    MLflow's filter parser strips the quotes and unescapes nothing, so a value is quoted
    with the quote character it does not contain.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"{value!r}: an MLflow filter value cannot hold both ' and \" characters")


def experiment_for(mlflow: Any, cfg: RunConfig) -> Any:
    """The experiment ``cfg``'s runs go to, made active, described and given its kind once.

    ``tracking.experiment``, else ``MLFLOW_EXPERIMENT_NAME`` when the config keeps the default.
    The kind (a machine-learning experiment) is set only where none is: a user's choice stays.
    """
    from rfdist.tracking.lineage import (
        EXPERIMENT_DESCRIPTION,
        EXPERIMENT_KIND,
        EXPERIMENT_KIND_TAG,
        experiment_name,
    )

    experiment = mlflow.set_experiment(experiment_name(cfg.tracking.experiment))
    tags = experiment.tags or {}
    missing = {"mlflow.note.content": EXPERIMENT_DESCRIPTION, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    for key, value in missing.items():
        if key not in tags:
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    return experiment


def _newest(mlflow: Any, experiment_id: str, tags: dict[str, str], run_name: str | None = None) -> Any:
    """The newest active run in ``experiment_id`` carrying every tag in ``tags`` (and ``run_name``), else ``None``."""
    from mlflow.entities import ViewType

    clauses = [f"tags.`{key}` = {filter_value(value)}" for key, value in tags.items()]
    if run_name is not None:
        clauses.append(f"attributes.run_name = {filter_value(run_name)}")
    runs = mlflow.search_runs(
        experiment_ids=[experiment_id],
        filter_string=" and ".join(clauses),
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0] if runs else None


def latest_run(mlflow: Any, cfg: RunConfig, storage_path: str) -> tuple[Any, Any]:
    """``(experiment, newest run of this job or None)``: runs of its name with its storage tag.

    The name is MLflow's own run name (no copy in an rfdist tag); renaming a run in the UI
    therefore detaches it from its job, whose next run starts afresh.
    """
    experiment = experiment_for(mlflow, cfg)
    run = _newest(mlflow, experiment.experiment_id, {"rfdist.storage": storage_path}, run_name=cfg.name)
    return experiment, run


def finished_step(client: Any, run: Any) -> int | None:
    """The step a FINISHED run ended at (its ``final_val_nll``'s step), else ``None``.

    A run is finished when rfdist closed it as FINISHED after logging the final model; the
    step tells whether a re-run with a larger ``train.max_steps`` still has work to do.
    """
    if run is None or run.info.status != "FINISHED":
        return None
    history = client.get_metric_history(run.info.run_id, "final_val_nll")
    return max((m.step for m in history), default=None)


def open_run(
    mlflow: Any, cfg: RunConfig, storage_path: str, tags: dict[str, str] | None = None, *, force: bool = False
) -> tuple[str, str]:
    """``(run_id, ray_name)`` of this job: a re-run with the same name continues its run.

    ``ray_name`` is the Ray Train run (checkpoint folder) the MLflow run trains in: ``cfg.name``,
    or a fresh ``NAME-xxxxxxxx`` for ``force`` (retrain from scratch), remembered in the run's tag
    ``rfdist.ray_name`` so that re-runs resume the right folder.
    """
    from rfdist.tracking.lineage import run_tags

    experiment, latest = latest_run(mlflow, cfg, storage_path)
    previous = latest.data.tags.get("rfdist.ray_name", cfg.name) if latest is not None else cfg.name
    if latest is not None and latest.info.status != "FINISHED" and not force:
        _reopen(mlflow.MlflowClient(), latest)
        return latest.info.run_id, previous
    ray_name = f"{cfg.name}-{uuid.uuid4().hex[:8]}" if force else previous
    run = mlflow.MlflowClient().create_run(
        experiment.experiment_id,
        run_name=cfg.name,
        tags=run_tags(
            {
                "rfdist.storage": storage_path,
                "rfdist.ray_name": ray_name,
                **(tags or {}),
            }
        ),
    )
    return run.info.run_id, ray_name


def _reopen(client: Any, run: Any) -> None:
    """A FAILED/KILLED run being resumed is RUNNING again, without its old failure tag."""
    if run.info.status in ("FAILED", "KILLED"):
        client.update_run(run.info.run_id, status="RUNNING")
        if FAILURE_TAG in run.data.tags:
            client.delete_tag(run.info.run_id, FAILURE_TAG)


def log_params(mlflow: Any, run_id: str, cfg: RunConfig) -> None:
    """Log ``cfg`` as the run's parameters (dotted keys), those it does not hold yet.

    ``tune.*`` is logged only where a search space is set (a sweep's parent run).
    """
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    existing = client.get_run(run_id).data.params
    params = [
        Param(k, str(v)[:500])
        for k, v in cfg.flat().items()
        if k not in existing and (cfg.tune.space or not k.startswith("tune."))
    ]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])


def open_parent_run(mlflow: Any, cfg: RunConfig) -> str:
    """The sweep's parent run: its unfinished run (same name and storage) resumes, else a new one.

    It lives in :func:`experiment_for`'s experiment, where its trials' runs go.
    """
    experiment = experiment_for(mlflow, cfg)
    tags = {"rfdist.sweep_name": cfg.name, "rfdist.storage": cfg.storage.path}
    latest = _newest(mlflow, experiment.experiment_id, tags)
    if latest is not None and latest.info.status != "FINISHED":
        _reopen(mlflow.MlflowClient(), latest)
        return latest.info.run_id
    run = mlflow.MlflowClient().create_run(
        experiment.experiment_id, run_name=cfg.name, tags={**tags, "rfdist.kind": "sweep"}
    )
    return run.info.run_id


def child_runs(client: Any, experiment_id: str, parent_run_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """``({trial_id: run_id}, {trial_id: stop_reason})`` of a sweep's child runs in ``experiment_id``."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = {filter_value(parent_run_id)}",
        max_results=1000,
    )
    ids, reasons = {}, {}
    for run in runs:
        trial = run.data.tags.get("rfdist.trial_id")
        if trial:
            ids[trial] = run.info.run_id
            if "rfdist.stop_reason" in run.data.tags:
                reasons[trial] = run.data.tags["rfdist.stop_reason"]
    return ids, reasons

"""Data-parallel training on Ray Train (``TorchTrainer``, DDP), tracked in MLflow.

The driver (:func:`run_training`) runs in four steps: preflight (config, data layout, ``d < D``,
storage and tracking, all before any worker starts), take the run's checkpoint-folder lock
(:mod:`rfdist.runtime.lock`) and start Ray, open — or, for a re-run with the same name,
reopen — one MLflow run (closed FAILED/KILLED with a reason on any failure or stop:
:func:`rfdist.tracking.runs.closed_on_failure`), build and fit a ``TorchTrainer`` whose workers run
:func:`rfdist.runtime.worker.train_loop_per_worker` (the core train step on a DDP-wrapped
model, gloo on CPU, nccl on GPU, each worker streaming its shard of the Parquet data; rank 0
writes checkpoints and per-step metrics), and finish the run: log the final model from the
latest checkpoint, register it and set aliases.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rfdist.config import RunConfig
from rfdist.core.builders import build_model
from rfdist.runtime import cluster
from rfdist.runtime.checkpoint import checkpoint_uri, load_state, storage_checkpoints, storage_target
from rfdist.runtime.console import quiet_driver, start_hints
from rfdist.runtime.datasets import PreparedData, prepare_data, ray_datasets
from rfdist.runtime.lock import RunLocked, acquire
from rfdist.runtime.worker import FAULT_TAG, WorkerHook, preprocess_fn, train_loop_per_worker
from rfdist.tracking.metric_names import SKIPPED_STEPS, VAL_NLL, report_value
from rfdist.tracking.runs import (
    closed_on_failure,
    filter_value,
    finished_step,
    latest_run,
    log_params,
    open_run,
    stop_signals,
)

__all__ = ["TrainingError", "TrainingResult", "run_training", "scaling_config"]


class TrainingError(RuntimeError):
    """Training failed; the message says why (the last good checkpoint is kept)."""


@dataclass
class TrainingResult:
    """What :func:`run_training` (and ``rfdist.fit``) returns.

    ``metrics``: the final ``val/nll`` and ``step``; ``checkpoint_path``: the final checkpoint on
    storage (``None`` for a run that had already finished); ``model_version``/``aliases``: the
    registered version of ``registered_model`` (``None`` when not registered).
    """

    run_id: str
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, float]
    model_version: str | None
    aliases: list[str]
    already_finished: bool = False
    registered_model: str | None = None

    @property
    def model_uri(self) -> str | None:
        """``models:/NAME/VERSION`` of the registered model (for ``rfdist.tracking.load_model``)."""
        if self.registered_model is None or self.model_version is None:
            return None
        return f"models:/{self.registered_model}/{self.model_version}"


def _worker_error(exc: BaseException) -> str:
    """One line for a failed ``fit``: the worker's own exception (``Type: message``), once."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    failures = getattr(exc, "worker_failures", None) or getattr(cause, "worker_failures", None)
    if failures:
        for failure in failures.values():
            text = str(failure)
            lines = [line for line in text.splitlines() if line.strip()]
            if not lines:
                continue
            if text.lstrip().startswith("Traceback"):  # Ray's wrapper: last line is "Type: message"
                return lines[-1].strip()
            return f"{type(failure).__name__}: {lines[-1].strip()}"  # the worker's exception itself
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


# ------------------------------------------------ run lookup (moving to rfdist.tracking.runs)


# ----------------------------------------------------------------------------------- driver
def run_training(
    cfg: RunConfig,
    *,
    address: str | None = None,
    datasets: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    register: bool = True,
    force: bool = False,
    worker_hooks: Sequence[WorkerHook] | None = None,
) -> TrainingResult:
    """Train per ``cfg`` on Ray Train; log, register and return the result.

    ``datasets``: ready ``train``/``val`` Ray Datasets (a sweep reads them once for all trials);
    ``callbacks`` go to the trainer's ``RunConfig`` (a sweep passes Tune's report callback);
    ``parent_run_id`` makes the MLflow run a child (one per sweep trial); ``register=False``
    logs the model without registering it. A job whose MLflow run is FINISHED at
    ``train.max_steps`` is not trained again (``already_finished``; no new run or version)
    unless ``force``, which trains from scratch in a fresh run. ``worker_hooks``
    (:class:`rfdist.runtime.worker.WorkerHook`) are pickled to every worker and see each
    batch and step there (tests inject faults and record rows with them).
    """
    import mlflow

    quiet_driver()  # before the MLflow database is opened (its INFO lines on creation)
    tracking_uri, prepared, storage = _preflight(cfg, address)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if not force:
        finished = _finished_result(mlflow, cfg, tracking_uri)
        if finished is not None:
            return finished
    try:
        lock = acquire(cfg.storage.path, cfg.name)
    except RunLocked as exc:
        raise TrainingError(str(exc)) from None
    with lock, stop_signals():
        try:  # Ray first: a start that fails leaves no MLflow run behind
            cluster.init_ray(cfg, address)
        except cluster.RayStartError as exc:
            raise TrainingError(str(exc)) from None
        run_id, ray_name, data_digest = _open_tracked_run(mlflow, cfg, prepared, tracking_uri, parent_run_id,
                                                          tags, force=force)  # fmt: skip
        lock.set_run_id(run_id)
        with closed_on_failure(mlflow.MlflowClient(), run_id):
            if parent_run_id is None:  # a sweep prints these once, not once per trial
                for line in start_hints(tracking_uri, cluster.dashboard_url()):
                    print(line, flush=True)
            trainer = _build_trainer(
                cfg, prepared, storage, datasets, callbacks,
                {"run_id": run_id, "tracking_uri": tracking_uri, "ray_name": ray_name,
                 "hooks": list(worker_hooks or [])},
            )  # fmt: skip
            try:
                result = trainer.fit()
            except Exception as exc:
                raise TrainingError(f"training run {cfg.name!r} failed: {_worker_error(exc)}") from exc
            fault = mlflow.MlflowClient().get_run(run_id).data.tags.get(FAULT_TAG)
            if fault:  # a deterministic fault (bad data): raised once, never retried by max_failures
                raise TrainingError(f"training run {cfg.name!r} failed: {fault}")
            if result.checkpoint is None:
                raise TrainingError(f"training run {cfg.name!r} produced no checkpoint")
            return _finish_run(mlflow, cfg, prepared, result.checkpoint, run_id=run_id, tracking_uri=tracking_uri,
                               register=register, data_digest=data_digest)  # fmt: skip


def _preflight(cfg: RunConfig, address: str | None = None) -> tuple[str, PreparedData, tuple[str, Any]]:
    """Everything that can be checked before a worker starts.

    Returns ``(tracking_uri, prepared data, (storage_path, filesystem))``.
    """
    from rfdist.recipes import preflight
    from rfdist.tracking.models import resolve_tracking_uri

    preflight.check_config(cfg)
    preflight.check_devices(cfg, address)
    preflight.check_storage(cfg.storage.path, cfg.storage.storage_options)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    preflight.check_tracking(tracking_uri)
    prepared = prepare_data(cfg)
    preflight.check_data(cfg, prepared.info)
    return tracking_uri, prepared, storage_target(cfg.storage.path, cfg.storage.storage_options)


def _finished_result(mlflow: Any, cfg: RunConfig, tracking_uri: str) -> TrainingResult | None:
    """The result of this job's run when it is FINISHED at ``train.max_steps`` or later, else ``None``."""
    _, latest = latest_run(mlflow, cfg, cfg.storage.path)
    client = mlflow.MlflowClient()
    done = finished_step(client, latest)
    if done is None or done < cfg.train.max_steps:
        return None
    version = _run_version(client, cfg.registry.name, latest.info.run_id)
    return TrainingResult(
        run_id=latest.info.run_id,
        tracking_uri=tracking_uri,
        checkpoint_path=None,
        metrics={VAL_NLL: float(latest.data.metrics.get("final_val_nll", math.nan)), "step": done},
        model_version=None if version is None else str(version.version),
        aliases=[] if version is None else list(version.aliases),
        already_finished=True,
        registered_model=None if version is None else cfg.registry.name,
    )


def _run_version(client: Any, name: str | None, run_id: str) -> Any:
    """The newest version of registered model ``name`` made from ``run_id`` (``None`` if none):
    a finished run found again still names the model it registered."""
    if name is None:
        return None
    found = client.search_model_versions(f"name={filter_value(name)} and run_id={filter_value(run_id)}")
    return max(found, key=lambda v: int(v.version), default=None)


def _open_tracked_run(
    mlflow: Any,
    cfg: RunConfig,
    prepared: PreparedData,
    tracking_uri: str,
    parent_run_id: str | None,
    tags: dict[str, str] | None,
    *,
    force: bool,
) -> tuple[str, str, Any]:
    """Open (or reopen) the job's MLflow run, log its params and data lineage.

    Returns ``(run_id, ray_name, data digest)``.
    """
    from rfdist.tracking.lineage import describe_run
    from rfdist.tracking.models import redact_uri

    run_tags = dict(tags or {})
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run_id, ray_name = open_run(mlflow, cfg, cfg.storage.path, run_tags, force=force)
    log_params(mlflow, run_id, cfg)
    data_digest = describe_run(run_id, cfg, prepared)
    print(f"[rfdist] MLflow run {run_id} at {redact_uri(tracking_uri)}", flush=True)
    return run_id, ray_name, data_digest


def scaling_config(cfg: RunConfig) -> Any:
    """Ray Train's ``ScalingConfig`` for ``cfg.scaling``: workers (a count or elastic
    ``(min, max)``), GPUs, CPUs, GPU fraction and further resources per worker."""
    import ray.train

    return ray.train.ScalingConfig(
        num_workers=cfg.scaling.num_workers,
        use_gpu=cfg.scaling.use_gpu,
        resources_per_worker=cfg.scaling.worker_resources(),
    )


def _build_trainer(
    cfg: RunConfig,
    prepared: PreparedData,
    storage: tuple[str, Any],
    datasets: dict[str, Any] | None,
    callbacks: list[Any] | None,
    run: dict[str, Any],
) -> Any:
    """The ``TorchTrainer`` of this run; ``run``: ``run_id``, ``tracking_uri``, ``ray_name``, ``hooks``."""
    import ray.train
    from ray.data.dataset import MaterializedDataset
    from ray.train.torch import TorchTrainer

    from rfdist.runtime.rendezvous import LoopbackTorchConfig

    storage_path, filesystem = storage
    if datasets is None:
        datasets = ray_datasets(cfg, prepared)
    # Materialized splits go to the workers as they are: train is split per epoch there
    # (rfdist.runtime.epochs), each rank keeps its part of val in memory. With both, Ray Train
    # starts no dataset actors (DatasetManager, SplitCoordinator) for the run.
    datasets = dict(datasets)
    materialized = {
        split: datasets.pop(split)
        for split in ("train", "val")
        if isinstance(datasets.get(split), MaterializedDataset)
    }
    loop_config = {
        "config": cfg.model_dump(mode="json"),
        "spec": prepared.spec.to_dict(),
        "stats": getattr(prepared.info, "stats", None),
        "unregistered_checkpoint": storage_checkpoints(storage_path, filesystem, run["ray_name"]),
        "train_dataset": materialized.get("train"),
        "val_dataset": materialized.get("val"),
        **run,
    }
    return TorchTrainer(
        train_loop_per_worker,
        torch_config=LoopbackTorchConfig(),  # rendezvous on 127.0.0.1 when all workers run here
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg),
        run_config=ray.train.RunConfig(
            name=run["ray_name"],
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.storage.max_failures),
            callbacks=callbacks,
            # Ray Train's INFO lines (worker group, each checkpoint and report) go to its log files
            # under the Ray session's logs/train/; the console keeps rfdist's own step lines
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.storage.keep,
                checkpoint_score_attribute=VAL_NLL,
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
    )


def _finish_run(
    mlflow: Any,
    cfg: RunConfig,
    prepared: PreparedData,
    checkpoint: Any,
    *,
    run_id: str,
    tracking_uri: str,
    register: bool,
    data_digest: Any,
) -> TrainingResult:
    """Log the final model (from the latest checkpoint) with its picture, register it, close the run."""
    from rfdist.data.reader import load_split
    from rfdist.eval.plots import plot_model

    info, spec = prepared.info, prepared.spec
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
        model = build_model(spec)
        model.load_state_dict(state.model)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(Path(directory) / "state.pt"), artifact_path="checkpoint")
            mlflow.log_dict(cfg.model_dump(mode="json"), "config.yaml")
            with tempfile.TemporaryDirectory() as tmp:
                sample_data = load_split(info, "val")[:1000]
                prep = preprocess_fn(cfg, tuple(spec.data_shape), getattr(info, "stats", None))
                plot_model(
                    model, prep(sample_data.reshape(sample_data.shape[0], -1)), Path(tmp) / "model.png",
                    title=f"step {state.step} · val NLL {report_value(state.metrics, VAL_NLL):.4f}",
                )  # fmt: skip
                mlflow.log_artifact(str(Path(tmp) / "model.png"), artifact_path="plots")
            val_nll = report_value(state.metrics, VAL_NLL)
            version, aliases = None, []
            if not math.isfinite(val_nll):
                mlflow.log_metric("final_val_nll", val_nll, step=state.step)
            else:
                version, aliases = _log_final_model(
                    mlflow, cfg, prepared, model, sample_data, state.step, val_nll, run_id=run_id,
                    tracking_uri=tracking_uri, register=register, data_digest=data_digest,
                    skipped=int(report_value(state.metrics, SKIPPED_STEPS, 0.0)),
                )  # fmt: skip
        checkpoint_path = checkpoint_uri(checkpoint)
    mlflow.MlflowClient().set_terminated(run_id, status="FINISHED")
    return TrainingResult(
        run_id=run_id,
        tracking_uri=tracking_uri,
        checkpoint_path=checkpoint_path,
        metrics={VAL_NLL: val_nll, "step": float(state.step)},
        model_version=version,
        aliases=aliases,
        registered_model=cfg.registry.name if version is not None else None,
    )


def _log_final_model(
    mlflow: Any,
    cfg: RunConfig,
    prepared: PreparedData,
    model: Any,
    sample_data: Any,
    step: int,
    val_nll: float,
    *,
    run_id: str,
    tracking_uri: str,
    register: bool,
    data_digest: Any,
    skipped: int = 0,
) -> tuple[str | None, list[str]]:
    """Log the model (in the active run) and, when ``register``, register it and set its aliases.

    A run with ``skipped`` steps (a non-finite loss or gradient: usually NaN/inf in the data) is
    registered but never made ``champion``, with one warning line saying so.
    """
    from rfdist.tracking.lineage import dataset_uri, describe_version
    from rfdist.tracking.models import log_flow_model, register_with_aliases

    stats = getattr(prepared.info, "stats", None)
    registered_name = cfg.registry.name if register else None
    logged = log_flow_model(
        model, prepared.spec, name=cfg.registry.name, registered_model_name=registered_name,
        input_example=sample_data[:4].reshape(min(4, len(sample_data)), -1).numpy(),
        preprocess={"kind": cfg.data.preprocess, "lam": cfg.data.logit_lambda, "stats": stats},
    )  # fmt: skip
    mlflow.log_metric("final_val_nll", val_nll, step=step, model_id=logged.model_id)
    mlflow.set_tag("rfdist.model_uri", logged.model_uri)  # MLflow 3: not under runs:/ID
    if not registered_name:
        return None, []
    version = str(logged.registered_model_version)
    describe_version(mlflow.MlflowClient(), registered_name, version, val_nll=val_nll, dataset=dataset_uri(cfg),
                     digest=data_digest, run_id=run_id)  # fmt: skip
    if skipped:
        where = cfg.data.path or f"data.synthetic {cfg.data.synthetic}"
        mlflow.MlflowClient().set_model_version_tag(registered_name, version, "rfdist.skipped_steps", str(skipped))
        print(
            f"[rfdist] warning: {skipped} training step(s) had a non-finite loss or gradient and were "
            f"skipped: {registered_name} v{version} is registered without the champion alias "
            f"(`rfdist data validate {where}`; `rfdist models promote` sets it by hand)",
            flush=True,
        )
        return version, []
    aliases = register_with_aliases(
        cfg.registry.name, version, metric="final_val_nll", value=val_nll, tracking_uri=tracking_uri
    )
    return version, aliases

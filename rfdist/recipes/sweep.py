"""Hyperparameter sweeps on Ray Tune, each trial a Ray Train run, tracked in MLflow.

A sweep searches the config keys listed in ``tune.space`` (the volume estimator, K, CG
tolerance and budget, β, lr, d, …) for the best validation NLL, and reports each trial's cost
beside it (seconds per step, decoder passes and CG matvecs per step, peak memory), because the
useful answer is the best likelihood *per unit of compute*. Ray Train V2 cannot be wrapped in
a ``Tuner`` directly, so each trial is a function trainable that builds and fits a
``TorchTrainer`` (:func:`rfdist.recipes.train.run_training`) with Tune's ``TuneReportCallback``.

MLflow: one parent run per sweep (its config, the search space, a summary CSV and a Pareto
plot of NLL vs cost) and one child run per trial (params, per-step metrics, ``rfdist.stop_reason``:
completed, stopped early by ASHA, or failed). The best completed trial's model is registered as
``registry.name`` (default: the sweep's name) with the alias ``sweep-best``. Running the same
command again (same ``name`` and ``storage.path``) resumes an interrupted sweep.

Example:
    >>> from rfdist.config import load_config
    >>> cfg = load_config(None, ["tune.space={estimator.num_samples: {choice: [1, 4]}}"])
    >>> sorted(search_space(cfg)["estimator"])
    ['num_samples']
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rfdist.config import ConfigError, RunConfig
from rfdist.tracking.metric_names import COST_KEYS, VAL_NLL, report_value

__all__ = ["SweepInterrupted", "SweepResult", "TrialSummary", "run_sweep", "search_space"]

#: Keys a sweep may not vary: they name the sweep itself, where it is stored or tracked.
FIXED_SECTIONS = ("name", "tune", "storage", "tracking", "registry")
DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
#: A trial's reported quantities: ``{name in Tune, MLflow and the summary CSV: TrialSummary field}``.
TRIAL_METRICS = {
    "val/nll": "val_nll",
    "perf/s_per_step": "s_per_step",
    "perf/matvecs_per_step": "matvecs_per_step",
    "perf/tangent_passes_per_step": "tangent_passes_per_step",
    "perf/peak_mem_mb": "peak_mem_mb",
    "perf/train_time_s": "train_time_s",
}
#: The summary CSV's columns (the trial's params follow as ``param:KEY``).
SUMMARY_COLUMNS = ("trial", "status", "steps", "val/nll", "best_val_nll", *list(TRIAL_METRICS)[1:])


class SweepInterrupted(RuntimeError):
    """The sweep stopped before every trial ended; the same command resumes it."""


@dataclass
class TrialSummary:
    """One trial's outcome and cost (a row of the summary table)."""

    trial: str
    params: dict[str, Any]
    status: str
    steps: int
    val_nll: float
    best_val_nll: float
    s_per_step: float
    matvecs_per_step: float
    tangent_passes_per_step: float
    peak_mem_mb: float
    train_time_s: float
    run_id: str | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """The trial's last reported quantities under their Tune/MLflow names (``val/nll``, ``perf/…``)."""
        return {name: getattr(self, attr) for name, attr in TRIAL_METRICS.items()}

    def value(self, metric: str) -> float:
        """The quantity ``metric`` names (a ``tune.metric``: ``val/nll``, ``perf/s_per_step``, …)."""
        return getattr(self, TRIAL_METRICS[metric])

    def row(self) -> dict[str, Any]:
        fields = {**self.metrics, "trial": self.trial, "status": self.status, "steps": self.steps,
                  "best_val_nll": self.best_val_nll}  # fmt: skip
        return {
            **{k: fields[k] for k in SUMMARY_COLUMNS},
            **{f"param:{k}": v for k, v in self.params.items()},
        }


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns."""

    parent_run_id: str
    tracking_uri: str
    trials: list[TrialSummary]
    best: TrialSummary | None
    model_name: str | None
    model_version: str | None
    summary_csv: str
    aliases: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------- search space
def _schema_has(cfg: RunConfig, key: str) -> bool:
    node: Any = cfg.model_dump()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _check_value(base: dict[str, Any], key: str, value: Any) -> None:
    """Validate the config with ``key=value`` so bad values fail here, naming the key."""
    raw = json.loads(json.dumps(base))
    raw["tune"] = {}
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    try:
        RunConfig.model_validate(raw)
    except Exception as exc:  # pydantic's ValidationError: keep the first problem, one line
        errors = getattr(exc, "errors", None)
        detail = str(exc)
        if callable(errors):  # the full key path of the problem (a nested unknown key included)
            first = errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
            detail = f"{where}: {message}" if where and where != key else message
        raise ConfigError(f"tune.space.{key}: value {value!r} is not valid for {key}: {detail}") from None


def _numbers(values: Any) -> Any:
    """``[low, high]`` with YAML's numeric strings (PyYAML reads ``1e-3`` as text) as numbers."""
    if not isinstance(values, list):
        return values
    out = []
    for value in values:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        out.append(value)
    return out


def _spec_of(key: str, raw_spec: Any) -> tuple[str, Any]:
    if isinstance(raw_spec, list):
        return "choice", raw_spec
    if isinstance(raw_spec, dict):
        if len(raw_spec) != 1 or next(iter(raw_spec)) not in DISTRIBUTIONS:
            raise ConfigError(
                f"tune.space.{key}: expected one of {{{', '.join(DISTRIBUTIONS)}}} with its values, "
                f"got {raw_spec!r}"
            )
        return next(iter(raw_spec.items()))
    return "fixed", raw_spec


def _list_domain(cfg: RunConfig, base: dict[str, Any], key: str, kind: str, values: Any) -> Any:
    """A ``choice``/``grid`` spec as a Tune domain (a grid under ``tune.search grid``)."""
    from ray import tune

    if not isinstance(values, list) or not values:
        raise ConfigError(f"tune.space.{key}: {kind} needs a non-empty list of values (got {values!r})")
    for value in values:
        _check_value(base, key, value)
    if cfg.tune.search == "optuna" and kind == "grid":
        raise ConfigError(f"tune.space.{key}: grid values need tune.search grid or random, not optuna")
    return tune.grid_search(values) if kind == "grid" or cfg.tune.search == "grid" else tune.choice(values)


def _range_domain(cfg: RunConfig, base: dict[str, Any], key: str, kind: str, values: Any) -> Any:
    """A ``uniform``/``loguniform``/``randint`` ``[low, high]`` spec as a Tune domain (bounds inclusive)."""
    from ray import tune

    values = _numbers(values)
    if (
        not isinstance(values, list)
        or len(values) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    ):
        raise ConfigError(f"tune.space.{key}: {kind} needs [low, high] numbers (got {values!r})")
    low, high = values
    if low > high:
        raise ConfigError(f"tune.space.{key}: {kind} needs low <= high (got low={low}, high={high})")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"tune.space.{key}: loguniform needs low > 0 (got {low})")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"tune.space.{key}: randint needs integer bounds (got {values!r})")
    for value in values:
        _check_value(base, key, value)
    if cfg.tune.search == "grid":
        raise ConfigError(f"tune.space.{key}: tune.search grid needs finite lists, not {kind}")
    if kind == "uniform":
        return tune.uniform(low, high)
    if kind == "loguniform":
        return tune.loguniform(low, high)
    return tune.randint(low, high + 1)  # inclusive bounds in the config


def search_space(cfg: RunConfig) -> dict[str, Any]:
    """The Ray Tune ``param_space`` (nested by config section) for ``cfg.tune.space``.

    Every problem raises :class:`ConfigError` naming ``tune.space.KEY``: a key that is not in
    the config, a key that cannot be swept, an empty choice, ``low > high``, non-positive
    log-uniform bounds, a value the config itself refuses (``K < 1``, an unknown estimator),
    and grid/range specs the chosen search algorithm cannot handle.
    """
    if not cfg.tune.space:
        raise ConfigError("tune.space: empty; list at least one config key to sweep")
    base = cfg.model_dump(mode="json")
    nested: dict[str, Any] = {}
    for key, raw_spec in cfg.tune.space.items():
        if key.split(".")[0] in FIXED_SECTIONS:
            raise ConfigError(f"tune.space.{key}: {key.split('.')[0]!r} settings cannot be swept")
        if not _schema_has(cfg, key):
            raise ConfigError(f"tune.space.{key}: unknown config key")
        kind, values = _spec_of(key, raw_spec)
        if kind in ("choice", "grid"):
            domain = _list_domain(cfg, base, key, kind, values)
        elif kind in ("uniform", "loguniform", "randint"):
            domain = _range_domain(cfg, base, key, kind, values)
        else:
            _check_value(base, key, values)
            domain = values
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = domain
    return nested


def _flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_name: str) -> RunConfig:
    """The run config of one trial: ``base`` with the sampled ``params`` (dotted keys)."""
    raw = json.loads(json.dumps(base))
    for key, value in params.items():
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    raw["name"] = trial_name
    raw["registry"] = {"name": None}
    raw["tune"] = {}
    return RunConfig.model_validate(raw)


# ---------------------------------------------------------------------------------- trial
def _trial(
    config: dict[str, Any],
    *,
    base: dict[str, Any],
    parent_run_id: str,
    sweep_name: str,
    datasets: dict[str, Any] | None,
) -> None:
    """One Tune trial: a full Ray Train run with the trial's hyperparameters."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from rfdist.recipes.train import run_training

    trial_id = ray.tune.get_context().get_trial_id()
    params = _flatten(config)
    cfg = trial_config(base, params, f"{sweep_name}-{trial_id}")
    run_training(
        cfg,
        datasets=datasets,
        callbacks=[TuneReportCallback()],
        parent_run_id=parent_run_id,
        tags={"rfdist.recipes.sweep": sweep_name, "rfdist.trial_id": trial_id},
        register=False,
    )


# --------------------------------------------------------------------------------- driver
def _concurrency(cfg: RunConfig, cpus: float | None = None, gpus: float | None = None) -> int:
    """Trials at once: ``tune.max_concurrent_trials``, or what the CPUs/GPUs hold (``auto``).

    ``cpus``/``gpus``: the cluster's resources when joining one, else this machine's. Each
    trial needs its workers plus one CPU for its driver, and one CPU stays free for Ray Data.
    """
    if isinstance(cfg.tune.max_concurrent_trials, int):
        return cfg.tune.max_concurrent_trials
    workers = cfg.scaling.max_workers
    if cfg.scaling.use_gpu:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count()
        return max(1, int(gpus // (workers * cfg.scaling.worker_resources()["GPU"])))
    per_trial = workers * cfg.scaling.cpus_per_worker + 1
    if cpus is None:
        return max(1, int((os.cpu_count() or 1) // per_trial))
    return max(1, int((cpus - 1) // per_trial))


def _init_ray(cfg: RunConfig, address: str | None, concurrency: int) -> None:
    """Join ``address`` or start a local Ray whose logical CPUs fit every concurrent trial.

    Each trial needs one CPU for its driver plus its workers, and Ray Data needs CPUs left
    over for its read tasks: without them a 2-core machine hangs silently.
    """
    from rfdist.runtime.cluster import check_cluster_gpus, connect_or_start_ray

    per_trial = cfg.scaling.max_workers * cfg.scaling.cpus_per_worker + 1
    connect_or_start_ray(address, math.ceil(concurrency * per_trial) + 2)
    check_cluster_gpus(cfg)


#: Trials the scheduler stopped early in this process, ``{trial_id: step}``. Tune reports them
#: only as TERMINATED, like trials stopped by Ctrl-C, so the scheduler records its own decisions.
_STOPPED_BY_SCHEDULER: dict[str, int] = {}


def _scheduler(cfg: RunConfig):
    if cfg.tune.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA (``time_attr="step"``) that records which trials it stopped early."""

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            step = int(result.get("step", 0) or 0)
            if decision == TrialScheduler.STOP and step < self._max_t:
                _STOPPED_BY_SCHEDULER[trial.trial_id] = step
            return decision

    return RecordingASHA(
        time_attr="step",
        max_t=cfg.tune.max_steps or cfg.train.max_steps,
        grace_period=cfg.tune.grace_period,
        reduction_factor=cfg.tune.reduction_factor,
        stop_last_trials=False,  # a trial that reaches max_t finishes itself: logs its model, closes its run
    )


def _search_alg(cfg: RunConfig, concurrency: int):
    """The searcher, limited to ``concurrency`` live trials (Tune ignores
    ``TuneConfig.max_concurrent_trials`` when given a ``BasicVariantGenerator`` instance)."""
    if cfg.tune.search == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=cfg.seed), max_concurrent=concurrency)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, max_concurrent=concurrency)


def _trial_id(result) -> str:
    """A trial's id from its public ``Result``: Tune adds ``trial_id`` to every report; a trial
    that reported nothing has it only in its folder name (``<trainable>_<id>_<index>_…``)."""
    if result.metrics and result.metrics.get("trial_id"):
        return str(result.metrics["trial_id"])
    match = re.search(r"_([0-9a-f]{5}_\d{5})(?:_|$)", Path(result.path).name)
    return match.group(1) if match else Path(result.path).name


def _summaries(
    result_grid, max_steps: int, child_runs: dict[str, str], earlier: dict[str, str]
) -> list[TrialSummary]:
    """One row per trial. ``earlier``: stop reasons recorded in MLflow by an earlier session."""
    trials = []
    for result in result_grid:  # public ``Result``s, one per trial, in trial order
        last = result.metrics or {}
        trial_id = _trial_id(result)
        steps = int(last.get("step", 0) or 0)
        if result.error is not None:
            status = "failed"
        elif steps >= max_steps:
            status = "completed"
        elif trial_id in _STOPPED_BY_SCHEDULER:
            status = f"stopped early by the scheduler at step {_STOPPED_BY_SCHEDULER[trial_id]}"
        elif earlier.get(trial_id, "").startswith("stopped early"):
            status = earlier[trial_id]
        else:
            status = "interrupted"
        frame = result.metrics_dataframe
        column = next((c for c in (VAL_NLL, "val_nll") if frame is not None and c in frame), None)
        best = float(frame[column].min()) if column is not None else None
        reported = {attr: report_value(last, name) for name, attr in TRIAL_METRICS.items()}
        trials.append(
            TrialSummary(
                trial=trial_id,
                params=_flatten(result.config or {}),
                status=status,
                steps=steps,
                best_val_nll=best if best is not None else reported["val_nll"],
                run_id=child_runs.get(trial_id),
                **reported,
            )
        )
    return trials


def format_table(trials: list[TrialSummary]) -> str:
    """A fixed-width text table of the trials (swept params, outcome and cost)."""
    param_keys = sorted({k for t in trials for k in t.params})
    header = ["trial", *param_keys, "val_nll", "s/step", "matvecs/step", "passes/step", "peak MB", "status"]
    rows = []
    for t in trials:
        rows.append(
            [
                t.trial,
                *[_fmt(t.params.get(k)) for k in param_keys],
                _fmt(t.val_nll),
                _fmt(t.s_per_step),
                _fmt(t.matvecs_per_step),
                _fmt(t.tangent_passes_per_step),
                _fmt(t.peak_mem_mb, "{:.0f}"),
                t.status,
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _fmt(value: Any, pattern: str = "{:.4g}") -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else pattern.format(value)
    return str(value)


def _write_csv(trials: list[TrialSummary], path: Path) -> None:
    rows = [t.row() for t in trials]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


@dataclass
class _Plan:
    """What the preflight settles before any trial starts, shared by the later steps."""

    space: dict[str, Any]
    prepared: Any
    tracking_uri: str
    base: dict[str, Any]  # every trial's config before its sampled params
    storage_path: str
    filesystem: Any
    max_steps: int


def _check_model_values(cfg: RunConfig, prepared: Any) -> None:
    """Every swept ``model.*`` value (d, flow, …) must fit the data's shape."""
    for key, raw_spec in cfg.tune.space.items():
        if not key.startswith("model."):
            continue
        _, values = _spec_of(key, raw_spec)
        for value in values if isinstance(values, list) else [values]:
            trial = trial_config(cfg.model_dump(mode="json"), {key: value}, cfg.name)
            try:
                trial.model.spec(tuple(prepared.info.shape), cfg.seed)
            except ConfigError as exc:
                raise ConfigError(f"tune.space.{key}: value {value!r}: {exc}") from None


def _preflight(cfg: RunConfig, address: str | None = None) -> _Plan:
    """Everything that can be checked before a trial starts; the data materialised once."""
    from rfdist.recipes import preflight
    from rfdist.runtime.checkpoint import storage_target
    from rfdist.runtime.datasets import prepare_data
    from rfdist.tracking.lineage import experiment_name
    from rfdist.tracking.models import resolve_tracking_uri

    space = search_space(cfg)
    preflight.check_config(cfg, sweep=True)
    preflight.check_devices(cfg, address)
    preflight.check_storage(cfg.storage.path, cfg.storage.storage_options)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    preflight.check_tracking(tracking_uri)
    prepared = prepare_data(cfg)
    preflight.check_data(cfg, prepared.info)
    _check_model_values(cfg, prepared)
    base = cfg.model_dump(mode="json")
    base["data"]["path"] = prepared.path  # materialised once here, not by every trial
    base["data"]["synthetic"] = None
    base["tracking"]["uri"] = tracking_uri
    # the experiment as this process resolves it (MLFLOW_EXPERIMENT_NAME included): the trials run
    # in Ray workers, whose environment is the cluster's, not this shell's
    base["tracking"]["experiment"] = experiment_name(cfg.tracking.experiment)
    max_steps = cfg.tune.max_steps or cfg.train.max_steps
    base["train"]["max_steps"] = max_steps
    storage_path, filesystem = storage_target(cfg.storage.path, cfg.storage.storage_options)
    return _Plan(space, prepared, tracking_uri, base, storage_path, filesystem, max_steps)


def _start_parent(mlflow: Any, cfg: RunConfig, tracking_uri: str) -> str:
    """The sweep's MLflow parent run (resumed when unfinished), with its config and search space."""
    from rfdist.tracking.models import redact_uri
    from rfdist.tracking.runs import log_params, open_parent_run

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    parent_run_id = open_parent_run(mlflow, cfg)
    log_params(mlflow, parent_run_id, cfg)
    mlflow.MlflowClient().log_text(
        parent_run_id, json.dumps(cfg.tune.space, indent=2), "sweep/search_space.json"
    )
    print(f"[rfdist] sweep {cfg.name!r}: MLflow parent run {parent_run_id} at {redact_uri(tracking_uri)}")
    return parent_run_id


def _build_tuner(cfg: RunConfig, plan: _Plan, parent_run_id: str, address: str | None):
    """Ray up, the datasets read once, and the ``Tuner``: restored when the sweep was interrupted."""
    import ray
    from ray import tune

    from rfdist.runtime import cluster
    from rfdist.runtime.console import start_hints
    from rfdist.runtime.datasets import ray_datasets

    local = not (address or os.environ.get("RAY_ADDRESS") or ray.is_initialized())
    concurrency = _concurrency(cfg)
    _init_ray(cfg, address, concurrency)
    for line in start_hints(plan.tracking_uri, cluster.dashboard_url()):  # once, not once per trial
        print(line, flush=True)
    if not local:
        resources = ray.cluster_resources()
        concurrency = _concurrency(cfg, resources.get("CPU", 1.0), resources.get("GPU", 0.0))
    print(f"[rfdist] sweep {cfg.name!r}: {concurrency} trial(s) at a time", flush=True)
    datasets = ray_datasets(cfg, plan.prepared)  # read once, shared by every trial
    if not all(type(ds).__name__ == "MaterializedDataset" for ds in datasets.values()):
        datasets = None  # a large dataset streams from storage in each trial
    trainable = tune.with_parameters(
        _trial, base=plan.base, parent_run_id=parent_run_id, sweep_name=cfg.name, datasets=datasets
    )
    experiment_path = f"{plan.storage_path.rstrip('/')}/{cfg.name}"
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=plan.filesystem):
        print(f"[rfdist] resuming sweep {cfg.name!r} from {experiment_path}", flush=True)
        return tune.Tuner.restore(
            experiment_path,
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            storage_filesystem=plan.filesystem,
        )
    return tune.Tuner(
        trainable,
        param_space=plan.space,
        tune_config=tune.TuneConfig(
            metric=cfg.tune.metric,
            mode=cfg.tune.mode,
            search_alg=_search_alg(cfg, concurrency),
            scheduler=_scheduler(cfg),
            num_samples=cfg.tune.num_samples,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=plan.storage_path,
            storage_filesystem=plan.filesystem,
            # no status table every 30 s nor TensorBoard hint (with quiet_tune: Ray 2.60's default
            # output engine prints its box at verbose=0 too): trials print rfdist's own step lines
            # and the sweep its summary; Tune's CSV/JSON results stay (ResultGrid reads them)
            verbose=0,
        ),
    )


def _record_trials(
    client: Any, cfg: RunConfig, parent_run_id: str, result_grid, max_steps: int
) -> list[TrialSummary]:
    """Each trial's outcome into its child run (stop reason, cost, run status).

    Raises :class:`SweepInterrupted` when a trial did not end.
    """
    from rfdist.tracking.runs import child_runs, close_run

    experiment_id = client.get_run(parent_run_id).info.experiment_id
    children, earlier = child_runs(client, experiment_id, parent_run_id)
    trials = _summaries(result_grid, max_steps, children, earlier)
    for t in trials:
        if t.run_id is not None and t.status == "interrupted":  # its process is gone: not RUNNING
            close_run(client, t.run_id, "KILLED", "interrupted with its sweep; the same command resumes it")
        if t.run_id is None or t.status == "interrupted":
            continue
        client.set_tag(t.run_id, "rfdist.stop_reason", t.status)
        for key in COST_KEYS:  # the cost under the names Tune saw (val/nll is the child's series)
            value = t.value(key)
            if math.isfinite(value):
                client.log_metric(t.run_id, key, value)
        status = client.get_run(t.run_id).info.status
        if t.status == "failed" and status != "FAILED":
            client.set_terminated(t.run_id, status="FAILED")
        elif t.status.startswith("stopped") and status != "KILLED":
            client.set_terminated(t.run_id, status="KILLED")
    unfinished = [t for t in trials if t.status == "interrupted"]
    if unfinished:
        raise SweepInterrupted(
            f"sweep {cfg.name!r} was interrupted with {len(unfinished)} trial(s) unfinished; "
            "run the same command again to resume it"
        )
    return trials


def _log_summary(
    client: Any, cfg: RunConfig, plan: _Plan, parent_run_id: str, trials: list[TrialSummary]
) -> Path:
    """The summary CSV, Pareto plot and table on the parent run; returns the CSV's path.

    They sit beside Tune's experiment state when that is local (else in a temp folder);
    MLflow holds the copies that matter.
    """
    from rfdist.eval.plots import plot_pareto

    local_dir = Path(plan.storage_path) / cfg.name if plan.filesystem is None else None
    outdir = (
        local_dir
        if local_dir is not None and local_dir.is_dir()
        else Path(tempfile.mkdtemp(prefix="rfdist-sweep-"))
    )
    summary_csv = outdir / "summary.csv"
    _write_csv(trials, summary_csv)
    client.log_artifact(parent_run_id, str(summary_csv), "sweep")
    plot_pareto(trials, outdir / "pareto.png", metric=cfg.tune.metric)
    client.log_artifact(parent_run_id, str(outdir / "pareto.png"), "plots")
    table = format_table(trials)
    client.log_text(parent_run_id, table + "\n", "sweep/summary.txt")
    print(table, flush=True)
    return summary_csv


def _finish(
    mlflow: Any, client: Any, cfg: RunConfig, parent_run_id: str, trials: list[TrialSummary], elapsed: float
) -> tuple[TrialSummary | None, str | None]:
    """Register the best completed trial's model (alias ``sweep-best``) and close the parent run.

    Returns ``(best trial or None, its registered version or None)``; no completed trial
    closes the parent as FAILED.
    """
    from rfdist.tracking.models import register_flow

    sign = 1.0 if cfg.tune.mode == "min" else -1.0
    metric = cfg.tune.metric
    completed = [t for t in trials if t.status == "completed" and t.run_id and math.isfinite(t.value(metric))]
    best = min(completed, key=lambda t: sign * t.value(metric)) if completed else None
    stopped = sum(t.status.startswith("stopped") for t in trials)
    client.log_metric(parent_run_id, "trials", float(len(trials)))
    client.log_metric(parent_run_id, "trials_stopped_early", float(stopped))
    client.log_metric(parent_run_id, "sweep_wall_s", elapsed)
    if best is None:
        client.set_terminated(parent_run_id, status="FAILED")
        return None, None
    model_name = cfg.registry.name or cfg.name
    model_uri = client.get_run(best.run_id).data.tags.get("rfdist.model_uri", f"runs:/{best.run_id}/model")
    from rfdist.tracking.models import quiet_mlflow

    with quiet_mlflow():  # the summary names the version; not MLflow's own words too
        version = register_flow(model_uri, model_name)  # its digests go onto the version's tags
    client.set_registered_model_alias(model_name, "sweep-best", version)
    client.set_tag(parent_run_id, "rfdist.best_trial", best.trial)
    client.set_tag(parent_run_id, "rfdist.best_run_id", best.run_id)
    client.log_metric(parent_run_id, "best_val_nll", best.val_nll)
    if metric != VAL_NLL:  # the headline of the metric the sweep chose by, too: best_s_per_step, …
        client.log_metric(parent_run_id, f"best_{TRIAL_METRICS[metric]}", best.value(metric))
    client.set_terminated(parent_run_id, status="FINISHED")
    return best, version


def run_sweep(cfg: RunConfig, *, address: str | None = None) -> SweepResult:
    """Run (or resume) the sweep ``cfg.tune`` describes; register the best trial's model.

    Raises :class:`ConfigError` before any trial starts for a bad search space or config, and
    :class:`SweepInterrupted` when the sweep was stopped (Ctrl-C) before every trial ended.
    """
    import mlflow

    from rfdist.runtime.console import quiet_driver, quiet_tune
    from rfdist.tracking.runs import closed_on_failure, stop_signals

    quiet_driver()  # before the MLflow database is opened (its INFO lines on creation)
    plan = _preflight(cfg, address)
    parent_run_id = _start_parent(mlflow, cfg, plan.tracking_uri)
    client = mlflow.MlflowClient()
    # an interrupted sweep ends KILLED (the same command resumes it); any other failure FAILED
    with stop_signals(), closed_on_failure(client, parent_run_id, stopped=(SweepInterrupted,)):
        tuner = _build_tuner(cfg, plan, parent_run_id, address)
        started = time.perf_counter()
        with quiet_tune():
            result_grid = tuner.fit()
        elapsed = time.perf_counter() - started
        trials = _record_trials(client, cfg, parent_run_id, result_grid, plan.max_steps)
        summary_csv = _log_summary(client, cfg, plan, parent_run_id, trials)
        best, version = _finish(mlflow, client, cfg, parent_run_id, trials, elapsed)
    return SweepResult(
        parent_run_id=parent_run_id,
        tracking_uri=plan.tracking_uri,
        trials=trials,
        best=best,
        model_name=(cfg.registry.name or cfg.name) if best else None,
        model_version=version,
        summary_csv=str(summary_csv),
        aliases=["sweep-best"] if best else [],
    )

"""Typed, validated configuration: one schema for ``train``, ``sweep`` and ``eval``.

Configs are YAML files plus ``--set key=value`` overrides (values parsed as YAML). Every error
names the config key (dotted path), what was expected and what was given, e.g.
``estimator.num_samples: must be >= 1 (got 0)``.

Example:
    >>> cfg = load_config(None, ["estimator.name=hutchinson", "train.max_steps=10"])
    >>> cfg.estimator.name, cfg.train.max_steps
    ('hutchinson', 10)
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rfdist.core.builders import ModelSpec, build_model
from rfdist.core.engine import LossOptions
from rfdist.core.options import (  # noqa: F401 (re-exported)
    BETA,
    DEFAULTS,
    GRAM_REUSE_STEPS,
    MODE,
    PRECONDITIONED_CG_BUDGET,
    EstimatorOptions,
)

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "load_config"]

SERVE_MAX_COUNT = 100_000
"""The most rows one ``params.count`` may ask a served model to sample (``output: sample``).

A served model has no run config: set ``RFDIST_SERVE_MAX_COUNT`` in the server's environment
to change it (:data:`SERVE_MAX_COUNT_ENV`)."""
SERVE_MAX_COUNT_ENV = "RFDIST_SERVE_MAX_COUNT"


class ConfigError(ValueError):
    """A configuration problem; its message is one line meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


CREDENTIAL_OPTIONS = re.compile(r"key|secret|token|password|credential|sas|connection_string", re.IGNORECASE)
"""``storage_options`` names refused in a config: a config is logged (MLflow params, its
``config.yaml`` artifact, Tune's trial files), so credentials come from the environment,
a profile or an instance role instead."""


TOKEN_MODES = ("anon", "google_default", "cloud", "browser")
"""gcsfs's ``token`` values that name a way to authenticate rather than hold a secret."""


def _storage_options(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """``storage_options`` of a config: no credentials (see :data:`CREDENTIAL_OPTIONS`)."""
    for name, option in (value or {}).items():
        if name == "token" and option in TOKEN_MODES:
            continue
        if CREDENTIAL_OPTIONS.search(str(name)):
            raise ValueError(
                f"{name!r}: credentials are not accepted in a config (it is logged); set them in the "
                "environment (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS), "
                "a profile or an instance role"
            )
    return value


class DataConfig(_Section):
    """Where the data comes from.

    ``path``: a Parquet dataset folder or ``s3://bucket/prefix`` (``train/ val/ test/`` shards).
    ``synthetic``: generate a synthetic manifold in memory instead (``von-mises`` | ``sphere``).
    ``features``: column names assembled into ``x`` for a user's table of numeric columns.
    ``materialize``: hold the splits in Ray's object store before training (``auto``: when they
    take under 256 MiB) — re-streaming small Parquet files every epoch costs more than a step.
    ``shuffle``: a new order every epoch, seeded by ``seed`` and the epoch (rfdist.runtime.epochs);
    ``shuffle_buffer``: rows in each worker's local shuffle buffer (0: block order only).
    ``storage_options``: passed to the filesystem of ``path`` (:mod:`rfdist.data.fs`), e.g.
    ``{endpoint_url: …, region: …}``, ``{client: fsspec}`` (``s3://`` through s3fs), gcsfs's
    ``{project: …}``; no credentials (they come from the environment).
    """

    path: str | None = None
    synthetic: Literal["von-mises", "sphere"] | None = None
    features: list[str] | None = None
    train_rows: int = Field(20_000, ge=1)
    test_rows: int = Field(5_000, ge=1)
    preprocess: Literal["none", "logit", "standardize"] = "none"
    materialize: Literal["auto", "always", "never"] = "auto"
    shuffle: bool = True
    shuffle_buffer: int = Field(10_000, ge=0)
    logit_lambda: float = Field(1e-6, gt=0, lt=0.5)
    storage_options: dict[str, Any] | None = None

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _storage_options(value)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of data.path (a Parquet dataset) or data.synthetic")
        if self.features is not None and len(self.features) == 0:
            raise ValueError("data.features must list at least one column")
        return self


class ModelConfig(_Section):
    """Architecture (see :class:`rfdist.core.builders.ModelSpec`); ``data_shape`` comes from the data.

    ``data_dim``, when set, states the D the model is meant for; a dataset of another D is refused.
    """

    latent_dim: int = Field(1, ge=1)
    data_dim: int | None = Field(None, ge=2)
    flow: Literal["coupling", "multiscale"] = "coupling"
    coupling: Literal["affine", "spline"] = "affine"
    flow_layers: int = Field(5, ge=1)
    flow_hidden: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["relu", "tanh", "elu", "silu"] = "relu"
    actnorm: bool = False
    permute: bool = False
    bins: int = Field(8, ge=2)
    bound: float = Field(5.0, gt=0)
    scales: int = Field(2, ge=0)
    couplings: int = Field(3, ge=1)
    conv_hidden: int = Field(64, ge=1)
    conv_blocks: int = Field(8, ge=1)
    density: Literal["nsf", "maf", "realnvp"] = "nsf"
    density_layers: int = Field(5, ge=1)
    density_hidden: list[int] = Field(default_factory=lambda: [32, 32])
    density_norm: Literal["none", "actnorm", "running"] = "none"

    def spec(self, data_shape: tuple[int, ...], seed: int) -> ModelSpec:
        """The :class:`ModelSpec` for data rows of ``data_shape``; checks ``d < D``."""
        data_dim = math.prod(data_shape)
        if self.data_dim is not None and self.data_dim != data_dim:
            raise ConfigError(
                f"model.data_dim: the model expects D={self.data_dim} but the dataset has D={data_dim}"
            )
        if self.latent_dim >= data_dim:
            raise ConfigError(
                f"model.latent_dim: must be smaller than the data dimension D={data_dim} "
                f"(got {self.latent_dim})"
            )
        if self.flow == "coupling" and len(data_shape) != 1:
            raise ConfigError(
                f"model.flow: 'coupling' needs vector rows but the dataset has image shape {data_shape}; "
                "use flow: multiscale"
            )
        if self.flow == "multiscale" and len(data_shape) != 3:
            raise ConfigError(
                f"model.flow: 'multiscale' needs image rows (C, H, W) but the dataset has shape {data_shape}"
            )
        fields = self.model_dump(exclude={"data_dim"})
        try:  # catch limits and architecture/shape mismatches here, not inside a remote worker
            spec = ModelSpec.from_dict({**fields, "data_shape": data_shape, "seed": seed})
            build_model(spec)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        return spec


class EstimatorConfig(_Section):
    """How the volume term's gradient is computed: the fields of
    :class:`rfdist.core.options.EstimatorOptions`, whose :data:`~rfdist.core.options.DEFAULTS`
    are this section's defaults too (the library and ``rfdist train`` use the same estimator).

    ``auto`` picks exact or hutchinson from :func:`rfdist.core.costmodel.choose_estimator` (the
    manifold dimension ``d``, ``num_samples``, the CG budget and the device). ``matvec``:
    ``vjp`` (reverse-mode products, cheaper on CPU) or ``jvp`` (forward mode);
    ``preconditioner``: ``gram`` (mean exact JᵀJ of ``precond_rows`` rows, rebuilt every
    ``precond_every`` steps) or ``none``;
    ``check_every``: CG iterations between host-synchronising convergence checks (0 = a fixed
    budget of ``cg_max_iters``, no host sync at all). ``chunk_size`` (exact) bounds memory:
    chunks are recomputed in backward.

    ``cg_max_iters`` unset: :data:`PRECONDITIONED_CG_BUDGET` iterations with the ``gram``
    preconditioner (measured in ``bench/estimators.py``: the gradient error equals that of the
    reference's 13 plain iterations — K=1 probe noise dominates the truncation — at ≤ 6
    matvec-equivalents a step, and no host sync), ``d`` without it. A tolerance-driven solve:
    ``cg_max_iters: 64, cg_tol: 1e-4``.
    """

    name: Literal["exact", "hutchinson", "auto"] = DEFAULTS.name
    num_samples: int = Field(DEFAULTS.num_samples, ge=1)
    cg_tol: float = Field(DEFAULTS.cg_tol, ge=0)
    cg_max_iters: int | None = Field(DEFAULTS.cg_max_iters, ge=1)
    probe: Literal["gaussian", "rademacher"] = DEFAULTS.probe
    chunk_size: int | None = Field(DEFAULTS.chunk_size, ge=1)
    matvec: Literal["jvp", "vjp"] = DEFAULTS.matvec
    preconditioner: Literal["none", "gram"] = DEFAULTS.preconditioner
    precond_rows: int | None = Field(DEFAULTS.precond_rows, ge=1)
    precond_every: int | None = Field(DEFAULTS.precond_every, ge=1)
    check_every: int = Field(DEFAULTS.check_every, ge=0)

    def options(self) -> EstimatorOptions:
        """This section as the core's record (``name`` may still be ``auto``)."""
        return DEFAULTS.updated(**self.model_dump())

    def gram_rows(self, latent_dim: int, batch: int) -> int:
        """Rows of the ``gram`` preconditioner (:meth:`EstimatorOptions.gram_rows`)."""
        return self.options().gram_rows(latent_dim, batch)

    def gram_every(self, latent_dim: int, batch: int) -> int:
        """Steps between Gram rebuilds (:meth:`EstimatorOptions.gram_every`)."""
        return self.options().gram_every(latent_dim, batch)

    def cg_budget(self, latent_dim: int) -> int:
        """CG iterations per step (:meth:`EstimatorOptions.cg_budget`)."""
        return self.options().cg_budget(latent_dim)


class TrainConfig(_Section):
    """Optimisation and loss options.

    ``eval_every``: steps between validation passes logged as ``val_nll``; every checkpoint
    (``checkpoint_every``) is validated as well, and the best checkpoint is chosen by that value.
    ``manifold_steps`` (two-step only): the manifold trains for this many steps and is frozen
    after them, while the latent density trains throughout (a sequential two-step, as M-flows
    are trained); unset, both train together on every step.
    """

    mode: Literal["ml", "two_step"] = MODE
    manifold_steps: int | None = Field(None, ge=1)
    max_steps: int = Field(1000, ge=1)
    batch_size: int = Field(1000, ge=1)
    lr: float = Field(3e-3, gt=0)
    beta: float = Field(BETA, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    eval_every: int = Field(200, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    max_consecutive_skips: int = Field(20, ge=1)
    log_every: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _manifold_steps_for_two_step(self) -> TrainConfig:
        if self.manifold_steps is not None and self.mode != "two_step":
            raise ValueError(
                f"train.manifold_steps={self.manifold_steps} needs train.mode=two_step (got {self.mode!r}): "
                "maximum likelihood trains the manifold and its density together"
            )
        return self


class ScalingConfig(_Section):
    """Ray Train workers (passed to ``ray.train.ScalingConfig``).

    ``num_workers``: a count, or ``[min, max]`` for elastic training (Ray Train V2 starts once
    ``min`` workers fit and grows the group towards ``max`` as resources appear; a resize
    restarts the workers from the latest checkpoint, so it needs ``storage.max_failures >= 1``).
    ``gpus_per_worker``: GPUs per worker with ``use_gpu`` (default 1; a fraction below 1 lets
    workers share a GPU). ``resources_per_worker``: further Ray resources each worker reserves
    (``memory`` in bytes, or a custom resource such as ``{"accelerator_type:A100": 0.01}``); CPU
    and GPU come from ``cpus_per_worker`` / ``gpus_per_worker``.
    """

    num_workers: int | tuple[int, int] = 1
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, gt=0)
    resources_per_worker: dict[str, float] = Field(default_factory=dict)

    @field_validator("num_workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> int | tuple[int, int]:
        expected = "expected a worker count >= 1 or [min, max] with 1 <= min <= max (elastic training)"
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        if (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 1 <= value[0] <= value[1]
        ):
            return value[0] if value[0] == value[1] else (value[0], value[1])
        raise ValueError(expected)

    @field_validator("resources_per_worker")
    @classmethod
    def _resources(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in ("CPU", "GPU"):
                raise ValueError(f"{name}: set scaling.{name.lower()}s_per_worker instead")
            if amount < 0:
                raise ValueError(f"{name}: must be >= 0 (got {amount})")
        return value

    @model_validator(mode="after")
    def _gpus(self) -> ScalingConfig:
        gpus = self.gpus_per_worker
        if gpus is not None and not self.use_gpu:
            raise ValueError(f"gpus_per_worker={gpus} needs use_gpu=true")
        if gpus is not None and gpus > 1 and gpus != int(gpus):
            raise ValueError(f"gpus_per_worker={gpus}: Ray takes a fraction below 1 or a whole number")
        return self

    @property
    def min_workers(self) -> int:
        """The fewest workers a run trains with (``num_workers`` when it is a count)."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        """The most workers a run trains with: what resources are budgeted for."""
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    def worker_resources(self) -> dict[str, float]:
        """Ray's ``resources_per_worker``: CPU, GPU (with ``use_gpu``) and the extra resources."""
        resources = {**self.resources_per_worker, "CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = 1.0 if self.gpus_per_worker is None else self.gpus_per_worker
        return resources


class TrackingConfig(_Section):
    """MLflow: ``uri`` overrides ``MLFLOW_TRACKING_URI`` and the embedded sqlite default.

    ``system_metrics``: sample the training node's CPU/RAM/disk/network (GPU with the ``gpu``
    extra) every ``system_metrics_interval_s`` seconds into the run (:mod:`rfdist.runtime.system_metrics`).
    ``checkpoint_plots``: log the model picture at every checkpoint (``images/``, by step).
    """

    uri: str | None = None
    experiment: str = "rfdist"
    system_metrics: bool = True
    system_metrics_interval_s: float = Field(10.0, gt=0)
    checkpoint_plots: bool = True


MODEL_NAME_FORBIDDEN = ("/", ":", ".", "%", '"', "'")
"""Characters MLflow refuses in a model name: the registry's (``/ :``) and the logged model's
(``/ : . % " '``, ``mlflow.utils.validation._validate_logged_model_name``); rfdist logs the model
under ``registry.name`` and registers it under the same name, so both rules apply."""


class RegistryConfig(_Section):
    """Model registry name (``None`` = do not register); MLflow's model-name rule is checked here,
    not after training."""

    name: str | None = None

    @field_validator("name")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is None:
            return value
        bad = [c for c in MODEL_NAME_FORBIDDEN if c in value]
        if not value.strip() or bad:
            shown = f"contains {bad[0]!r}" if bad else "is empty"
            raise ValueError(
                f"{shown}; MLflow model names cannot be empty or contain " + " ".join(MODEL_NAME_FORBIDDEN)
            )
        return value


#: ``tune.metric``'s earlier flat names and the MLflow names that replaced them.
TUNE_METRIC_RENAMED = {
    "val_nll": "val/nll",
    **{name: f"perf/{name}" for name in ("s_per_step", "train_time_s", "matvecs_per_step", "peak_mem_mb")},
}


class TuneConfig(_Section):
    """Sweep settings (used by ``rfdist sweep``; see :mod:`rfdist.recipes.sweep`).

    ``space`` maps dotted config keys to a distribution, e.g.
    ``{"estimator.num_samples": {"choice": [1, 4]}, "train.lr": {"loguniform": [1e-3, 1e-2]}}``
    (also ``grid``, ``uniform``, ``randint``; a bare list is a ``choice``). ``grace_period`` and
    ``max_steps`` are in training steps (ASHA's ``time_attr`` is ``step``; ``max_steps`` defaults
    to ``train.max_steps``). ``max_concurrent_trials: auto`` fits trials to the CPUs/GPUs.
    ``num_samples`` is the number of trials (with ``search: grid``, repeats of the whole grid).
    """

    num_samples: int = Field(4, ge=1)
    max_concurrent_trials: int | Literal["auto"] = "auto"
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: int = Field(100, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    max_steps: int | None = Field(None, ge=1)
    metric: Literal[
        "val/nll", "perf/s_per_step", "perf/train_time_s", "perf/matvecs_per_step", "perf/peak_mem_mb"
    ] = "val/nll"
    mode: Literal["min", "max"] = "min"
    space: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metric", mode="before")
    @classmethod
    def _renamed_metric(cls, value: Any) -> Any:
        """The flat names of earlier configs (``val_nll``, ``s_per_step``, …), read as their MLflow names."""
        renamed = TUNE_METRIC_RENAMED.get(value) if isinstance(value, str) else None
        if renamed is None:
            return value
        warnings.warn(
            f"tune.metric: {value!r} is now called {renamed!r} (the MLflow name); reading it as that",
            FutureWarning,
            stacklevel=2,
        )
        return renamed

    @model_validator(mode="after")
    def _positive_concurrency(self) -> TuneConfig:
        if isinstance(self.max_concurrent_trials, int) and self.max_concurrent_trials < 1:
            raise ValueError("tune.max_concurrent_trials must be >= 1 or 'auto'")
        return self


class StorageConfig(_Section):
    """Where checkpoints go (local folder, ``s3://bucket/prefix`` or an fsspec URI such as
    ``gs://bucket/prefix``); ``storage_options`` as for ``data.storage_options``."""

    path: str = "runs"
    keep: int = Field(2, ge=1)
    max_failures: int = Field(1, ge=0)
    storage_options: dict[str, Any] | None = None

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return _storage_options(value)


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A run name: it becomes a folder, a Ray run name and an MLflow tag value, so ASCII only."""


class RunConfig(_Section):
    """The whole configuration of a run."""

    name: str = "rfdist"
    seed: int = 0
    data: DataConfig = Field(default_factory=lambda: DataConfig(synthetic="von-mises"))
    model: ModelConfig = Field(default_factory=ModelConfig)
    estimator: EstimatorConfig = Field(default_factory=EstimatorConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @field_validator("name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if not RUN_NAME.fullmatch(value):
            raise ValueError("use 1-100 characters from A-Z a-z 0-9 . _ - (starting with a letter or digit)")
        return value

    def loss_options(self) -> LossOptions:
        """The :class:`~rfdist.core.engine.LossOptions` this config asks for (``auto`` resolved)."""
        from rfdist.core.costmodel import choose_estimator

        estimator = self.estimator.name
        if estimator == "auto":
            estimator = choose_estimator(
                self.model.latent_dim,
                num_samples=self.estimator.num_samples,
                matvecs=self.estimator.cg_budget(self.model.latent_dim),
                device="cuda" if self.scaling.use_gpu else "cpu",
            )
        batch = max(1, self.train.batch_size // self.scaling.max_workers)  # per worker, the smallest
        resolved = self.estimator.options().updated(name=estimator).resolved(self.model.latent_dim, batch)
        return LossOptions.of(resolved, mode=self.train.mode, beta=self.train.beta)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (for logging as parameters)."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.model_dump())
        return out


def _format_validation_error(error: ValidationError, source: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "value_error":
            message = message.removeprefix("Value error, ")
        given = item.get("input")
        shown = (
            ""
            if item["type"] in ("extra_forbidden", "missing") or isinstance(given, dict)
            else (f" (got {given!r})")
        )
        problems.append(f"{key}: {message}{shown}")
    return f"invalid config {source}: " + "; ".join(problems)


def _yaml_problem(exc: yaml.YAMLError, *, location: bool = False) -> str:
    """PyYAML's several-line message as one clause: ``:LINE:COL: problem`` (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    context = getattr(exc, "context", None)
    if context:
        problem = f"{problem} ({' '.join(str(context).split())})"
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    if location:
        return f"{where}: not valid YAML: {problem}"
    return f"{problem} at {where[1:]}" if where else problem


_SOURCES = {"path", "synthetic"}  # data.* keys naming where the data comes from (exactly one)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {text!r}: {_yaml_problem(exc)}") from None
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
        if parts[0] == "data" and len(parts) == 2 and parts[1] in _SOURCES and value is not None:
            for other in _SOURCES - {parts[1]}:  # the later, explicit source wins
                if node.get(other) is not None:
                    node[other] = None
    return raw


def _duplicate_key(text: str) -> tuple[str, int] | None:
    """The first key given twice in one YAML mapping (dotted path, 1-based line), else ``None``.

    PyYAML keeps the last of duplicate keys silently; a config that sets ``train.lr`` twice is
    a mistake whichever value was meant.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    todo: list[tuple[str, Any]] = [("", root)]
    while todo:
        prefix, node = todo.pop()
        if isinstance(node, yaml.SequenceNode):
            todo.extend((f"{prefix}[{i}]", item) for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value)
            path = f"{prefix}.{key}" if prefix else key
            if key in seen and key != "<<":
                return path, key_node.start_mark.line + 1
            seen.add(key)
            todo.append((path, value_node))
    return None


def load_config(
    path: str | Path | None, overrides: list[str] | None = None, *, base: dict[str, Any] | None = None
) -> RunConfig:
    """Read, override and validate a config; raises :class:`ConfigError` with one clear line.

    ``base``: a nested dict to start from instead of a file (the Python API's dict configs).
    """
    raw: dict[str, Any] = copy.deepcopy(dict(base)) if base is not None else {}
    source = "(defaults)" if base is None else "(dict)"
    if path is not None:
        source = str(path)
        file = Path(path)
        if not file.is_file():
            from rfdist import presets

            preset = presets.find(str(path))
            if preset is None:
                raise ConfigError(f"config file not found: {file} (nor a preset: `rfdist presets list`)")
            file = preset
        try:
            text = file.read_text()
            loaded = yaml.safe_load(text)
            duplicate = _duplicate_key(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file}{_yaml_problem(exc, location=True)}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file}: cannot read it ({exc})") from None
        if duplicate is not None:
            raise ConfigError(
                f"config file {file}:{duplicate[1]}: duplicate key {duplicate[0]!r} "
                "(it is set twice; keep one)"
            )
        if loaded is None:  # an empty file is a mistake, not "train the defaults"
            raise ConfigError(
                f"config file {file} is empty (expected a mapping of sections, e.g. name:, data:)"
            )
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        raw = loaded
    raw = apply_overrides(raw, list(overrides or []))
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None

"""The Python API of the distributed path: :func:`fit` a config on Ray Train, :func:`sweep` it on
Ray Tune, tracked in MLflow.

``rfdist.fit`` is what ``rfdist train CONFIG --set …`` runs, as a function that returns a
result (metrics, checkpoint path, MLflow run id, registered version) instead of printing it.
It differs from :func:`rfdist.core.engine.fit`, the single-process loop that fits a model
object in memory (no Ray, no MLflow, no config).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rfdist.config import ConfigError, RunConfig, load_config
from rfdist.recipes.sweep import SweepResult, run_sweep
from rfdist.recipes.train import TrainingResult, run_training

__all__ = ["as_config", "fit", "sweep"]


def _override_items(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """``{"train.max_steps": 10}`` or ``["train.max_steps=10"]`` as ``--set`` items."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise ConfigError("overrides: expected a mapping {'section.key': value} or a list of 'key=value'")
    if isinstance(overrides, Mapping):
        import yaml

        # values travel as YAML (as --set parses them): a list or None keeps its type
        return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                for key, value in overrides.items()]  # fmt: skip
    return list(overrides)


def as_config(
    config: RunConfig | str | Path | Mapping[str, Any] | None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
) -> RunConfig:
    """A validated :class:`~rfdist.config.RunConfig` from a config object, a YAML path, a nested
    dict or ``None`` (the defaults), with ``overrides`` applied; raises ``ConfigError``."""
    items = _override_items(overrides)
    if isinstance(config, RunConfig):
        return load_config(None, items, base=config.model_dump(mode="json")) if items else config
    if isinstance(config, Mapping):
        return load_config(None, items, base=dict(config))
    return load_config(config, items)


def fit(
    config: RunConfig | str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    address: str | None = None,
    force: bool = False,
    register: bool = True,
) -> TrainingResult:
    """Train ``config`` on Ray Train, track it in MLflow and register the model; returns the result.

    ``config``: a :class:`~rfdist.config.RunConfig`, a YAML file, a nested dict, or ``None`` for
    the defaults; ``overrides``: ``{"train.max_steps": 100}`` or ``["train.max_steps=100"]`` (as
    ``--set``). ``address``: a Ray cluster (default: ``RAY_ADDRESS``, else a Ray already started
    in this process, else a private local one). As with ``rfdist train``, a re-run resumes an
    unfinished run and returns a finished one's result without training
    (``result.already_finished``) unless ``force``. Raises ``ConfigError``/``DataError`` for bad
    input (before any worker starts) and :class:`~rfdist.recipes.train.TrainingError` when
    training fails.

    Example (not run by the doctests: it starts Ray):

        import rfdist

        result = rfdist.fit("von-mises", {"train.max_steps": 300})
        result.metrics["val/nll"], result.run_id, result.model_version  # (1.7, 'f3a…', '1')
        result.checkpoint_path     # the final checkpoint, on storage.path
        result.model_uri           # 'models:/von-mises/1': rfdist.tracking.load_model(result.model_uri)
    """
    cfg = as_config(config, overrides)
    return run_training(cfg, address=address, force=force, register=register)


def sweep(
    config: RunConfig | str | Path | Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    address: str | None = None,
) -> SweepResult:
    """Run (or resume) the Ray Tune sweep ``config.tune`` describes, as ``rfdist sweep`` does.

    ``config``/``overrides``/``address`` as for :func:`fit`. Returns the trials, the best one and
    its registered version (alias ``sweep-best``); a bad search space or config raises
    ``ConfigError`` before any trial starts.

    Example (not run by the doctests: it starts Ray):

        result = rfdist.sweep("sweep-von-mises", {"tune.num_samples": 4})
        result.best.metrics, result.model_name, result.model_version, result.summary_csv
    """
    return run_sweep(as_config(config, overrides), address=address)

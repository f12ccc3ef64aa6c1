"""MLflow: where runs are tracked, how a RectangularFlow is logged, registered and loaded back.

The model is logged as an MLflow *pyfunc* "model from code" (:mod:`rfdist.mlflow_model`, no
pickled Python objects) that rebuilds the flow from its ``ModelSpec`` (JSON)
and a ``state_dict`` read with ``torch.load(weights_only=True)`` — no pickled code — because
MLflow 3's default ``torch.export`` format keeps only ``forward`` and a flow needs
``log_prob``/``sample``/``encode``. ``predict`` returns per-row log-densities.

Example:
    >>> resolve_tracking_uri("sqlite:///relative.db").startswith("sqlite:////")
    True
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import torch

from .builders import ModelSpec
from .model import RectangularFlow

__all__ = [
    "DEFAULT_DB",
    "ModelRecord",
    "get_model_record",
    "list_models",
    "load_model",
    "log_flow_model",
    "promote",
    "redact_uri",
    "register_with_aliases",
    "resolve_tracking_uri",
]

DEFAULT_DB = "mlflow.db"


def resolve_tracking_uri(configured: str | None = None, *, workdir: str | Path | None = None) -> str:
    """``configured``, else ``MLFLOW_TRACKING_URI``, else an absolute sqlite file in ``workdir``.

    Relative sqlite URIs are made absolute: Ray changes workers' working directories, so a
    relative database path would silently split one run's records across several files.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    base = Path(workdir or os.getcwd()).resolve()
    if not uri:
        return f"sqlite:///{base / DEFAULT_DB}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(base / uri[len('sqlite:///') :]).resolve()}"
    if "://" not in uri:  # a bare path: treat as a sqlite file
        return f"sqlite:///{(base / uri).resolve()}"
    return uri


def redact_uri(uri: str) -> str:
    """``uri`` with any ``user:password@`` removed, for printing and logging."""
    parts = urlsplit(uri)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return uri


def _mlflow():
    import mlflow

    return mlflow


def _requirements() -> list[str]:
    import zuko

    from . import __version__

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"zuko=={zuko.__version__}",
        f"rfdist=={__version__}",
    ]


def log_flow_model(
    model: RectangularFlow,
    spec: ModelSpec,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
):
    """Log ``model`` to the active MLflow run as a pyfunc (optionally registering it).

    Refuses a model with non-finite parameters: a NaN model must never reach the registry.
    """
    mlflow = _mlflow()
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"refusing to log a model with non-finite parameter {key!r}")
    with tempfile.TemporaryDirectory() as tmp:
        state_path = Path(tmp) / "state.pt"
        spec_path = Path(tmp) / "spec.json"
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, state_path)
        spec_path.write_text(json.dumps(spec.to_dict()))
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).with_name("mlflow_model.py")),
            artifacts={"state": str(state_path), "spec": str(spec_path)},
            pip_requirements=_requirements(),
            registered_model_name=registered_model_name,
        )


def load_model(uri: str, *, tracking_uri: str | None = None) -> RectangularFlow:
    """Load a logged flow (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/…``).

    Returns a :class:`RectangularFlow` in eval mode whose ``log_prob`` and ``sample`` work.
    """
    mlflow = _mlflow()
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    uri = _resolve_latest(uri)
    loaded = mlflow.pyfunc.load_model(uri)
    return loaded.unwrap_python_model().model


def _resolve_latest(uri: str) -> str:
    """``models:/NAME@latest`` → ``models:/NAME/latest`` (MLflow reserves the alias name)."""
    if uri.startswith("models:/") and uri.lower().endswith("@latest"):
        return uri[: -len("@latest")] + "/latest"
    return uri


@dataclass
class ModelRecord:
    """One registered model version, as ``rfdist models show`` prints it."""

    name: str
    version: str
    aliases: list[str]
    run_id: str | None
    source: str
    metrics: dict[str, float]
    created: int

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _quoted(value: str) -> str:
    from .preflight import filter_value

    return filter_value(value)


def _client(tracking_uri: str | None):
    mlflow = _mlflow()
    uri = resolve_tracking_uri(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def register_with_aliases(
    name: str,
    version: str,
    *,
    metric: str = "val_nll",
    value: float | None,
    lower_is_better: bool = True,
    tracking_uri: str | None = None,
) -> list[str]:
    """Set ``champion`` on ``version`` when it beats the current champion on ``metric``.

    ``latest`` needs no alias: MLflow reserves that name, and rfdist resolves
    ``models:/NAME@latest`` to the newest version (which ``version`` is, just registered).
    Returns the aliases that now point at ``version``. A non-finite ``value`` never wins.
    """
    client = _client(tracking_uri)
    aliases = ["latest"]
    if value is None or not math.isfinite(value):
        return aliases
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except Exception:  # no champion yet
        current = None
    best = None
    if current is not None and current.run_id:
        best = client.get_run(current.run_id).data.metrics.get(metric)
    better = best is None or (value < best if lower_is_better else value > best)
    if better:
        client.set_registered_model_alias(name, "champion", version)
        aliases.append("champion")
    return aliases


def _record(client, version) -> ModelRecord:
    metrics = {}
    if version.run_id:
        try:
            metrics = dict(client.get_run(version.run_id).data.metrics)
        except Exception:
            metrics = {}
    return ModelRecord(
        name=version.name,
        version=str(version.version),
        aliases=list(getattr(version, "aliases", []) or []),
        run_id=version.run_id,
        source=version.source,
        metrics=metrics,
        created=int(version.creation_timestamp or 0),
    )


def list_models(*, tracking_uri: str | None = None) -> list[dict[str, Any]]:
    """Registered models with their latest version and aliases."""
    client = _client(tracking_uri)
    out = []
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name={_quoted(model.name)}")
        aliases = {}
        for alias, version in (getattr(model, "aliases", None) or {}).items():
            aliases[alias] = str(version)
        out.append(
            {
                "name": model.name,
                "versions": len(versions),
                "latest_version": max((int(v.version) for v in versions), default=0),
                "aliases": aliases,
            }
        )
    return out


def get_model_record(ref: str, *, tracking_uri: str | None = None) -> ModelRecord:
    """``NAME``, ``NAME@ALIAS`` or ``NAME/VERSION`` (a ``models:/`` prefix is accepted)."""
    client = _client(tracking_uri)
    ref = ref.removeprefix("models:/")
    if ref.lower().endswith("@latest"):
        ref = ref[: -len("@latest")]
    if "@" in ref:
        name, alias = ref.split("@", 1)
        version = client.get_model_version_by_alias(name, alias)
    elif "/" in ref:
        name, number = ref.split("/", 1)
        version = client.get_model_version(name, number)
    else:
        versions = client.search_model_versions(f"name={_quoted(ref)}")
        if not versions:
            raise LookupError(f"no registered model named {ref!r}")
        version = max(versions, key=lambda v: int(v.version))
    return _record(client, version)


def promote(name: str, version: str, alias: str, *, tracking_uri: str | None = None) -> None:
    """Point ``alias`` of model ``name`` at ``version``."""
    client = _client(tracking_uri)
    client.get_model_version(name, version)  # raises a clear MLflow error when missing
    client.set_registered_model_alias(name, alias, version)

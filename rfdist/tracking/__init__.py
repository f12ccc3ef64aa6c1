"""MLflow only: where runs are tracked, how a flow is logged, registered and loaded back.

- :mod:`rfdist.tracking.models` — log a flow as a pyfunc, load it back (digest-checked), the registry;
- :mod:`rfdist.tracking.pyfunc` — the pyfunc wrapper ``mlflow models serve`` runs;
- :mod:`rfdist.tracking.lineage` — run names, tags, descriptions and the experiment;
- :mod:`rfdist.tracking.metric_log` — the buffered metric sink that rides out a server outage;
- :mod:`rfdist.tracking.metric_names` — one name per quantity.

The names below load :mod:`rfdist.tracking.models` (torch, MLflow) on first use.

Example:
    >>> from rfdist.tracking import resolve_tracking_uri
    >>> resolve_tracking_uri("sqlite:///relative.db").startswith("sqlite:////")
    True
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rfdist.tracking.models import (
        DEFAULT_DB,
        ModelRecord,
        get_model_record,
        list_models,
        load_flow,
        load_model,
        log_flow_model,
        promote,
        redact_uri,
        register_with_aliases,
        resolve_tracking_uri,
        verify_model_code,
    )

__all__ = [
    "DEFAULT_DB",
    "ModelRecord",
    "get_model_record",
    "list_models",
    "load_flow",
    "load_model",
    "log_flow_model",
    "promote",
    "redact_uri",
    "register_with_aliases",
    "resolve_tracking_uri",
    "verify_model_code",
]


def __getattr__(name: str) -> Any:
    """Load :mod:`rfdist.tracking.models` on first use of one of its public names."""
    if name in __all__:
        value = getattr(importlib.import_module("rfdist.tracking.models"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rfdist.tracking' has no attribute {name!r}")

"""The MLflow internals rfdist relies on, one function each, where no public MLflow API does the job.

Each docstring names the internal and why nothing public serves. ``tests/test_mlflow_internals.py``
checks that every one still exists and behaves as assumed, so an MLflow upgrade that moves or
changes one fails that test by name.
"""

from __future__ import annotations

__all__ = ["context_tags"]


def context_tags() -> dict[str, str]:
    """The tags MLflow's run-context providers give a new run (user, source name/type, git commit).

    Relies on: ``mlflow.tracking.context.registry.resolve_tags``, which ``mlflow.start_run`` calls
    for a new run. No public API: rfdist creates runs with ``MlflowClient.create_run`` (it does not
    make them the active run), which adds no context tags, and MLflow exposes the providers only
    through this registry.
    """
    from mlflow.tracking.context.registry import resolve_tags

    return dict(resolve_tags({}))

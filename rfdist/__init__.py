"""rfdist: rectangular (injective) normalizing flows, trained at scale.

The packages are the layers, each importing only those below it (checked by import-linter):

- :mod:`rfdist.core` — pure PyTorch: the volume term, flows, densities, the model, the engine;
- :mod:`rfdist.data` — Parquet datasets (local, ``s3://``, fsspec stores) and their sources;
- :mod:`rfdist.eval` — metrics, feature extractors and plots;
- :mod:`rfdist.config` — the run configuration (one schema, one parse);
- :mod:`rfdist.tracking` — MLflow: runs, models, the registry;
- :mod:`rfdist.runtime` — Ray: the local cluster, the worker loop, checkpoints;
- :mod:`rfdist.recipes` — train, sweep, score, evaluate, submit: each joins the layers above;
- :mod:`rfdist.cli` — the ``rfdist`` command.

Importing ``rfdist`` is cheap: the names below load their modules (and torch) on first use.
:func:`fit` trains a config on Ray Train with MLflow tracking (what ``rfdist train`` runs),
:func:`sweep` runs its Ray Tune sweep (``rfdist sweep``);
:func:`rfdist.core.engine.fit` is the single-process loop on a model object in memory.

Example:
    >>> from rfdist import ModelSpec, build_model
    >>> build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_hidden=(8,))).sample(2).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from rfdist import _moved

if TYPE_CHECKING:
    from rfdist.config import RunConfig, load_config
    from rfdist.core.builders import ModelSpec, build_model
    from rfdist.core.model import RectangularFlow
    # fit and TrainingResult (rfdist.recipes.api, rfdist.recipes.train) are not imported here:
    # the lower layers import this package, and import-linter counts type-checking imports

__all__ = [
    "ModelSpec",
    "RectangularFlow",
    "RunConfig",
    "TrainingResult",
    "build_model",
    "fit",
    "load_config",
    "sweep",
]
__version__ = "0.1.0"

_LAZY = {
    "ModelSpec": "rfdist.core.builders",
    "build_model": "rfdist.core.builders",
    "RectangularFlow": "rfdist.core.model",
    "RunConfig": "rfdist.config",
    "load_config": "rfdist.config",
    "fit": "rfdist.recipes.api",
    "sweep": "rfdist.recipes.api",
    "TrainingResult": "rfdist.recipes.train",
}

_moved.install()


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (keeps ``import rfdist`` free of torch)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rfdist' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

"""Old module paths of rfdist, kept importable after the move into layer packages.

``import rfdist.train`` still works and gives :mod:`rfdist.recipes.train` itself (the same
module object, so ``monkeypatch`` and pickles by reference see one module), with a
``DeprecationWarning`` naming the new path. One finder serves every moved module, instead of a
shim file per old path (as zuko's ``zuko/flows/core.py``), so the package stays one folder per
layer. Paths that are part of the public contract stay real modules without a warning:
:mod:`rfdist.volume` and :mod:`rfdist.mlflow_model` (the class path logged models name).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED = {
    "rfdist.flows": "rfdist.core.flows",
    "rfdist.flows.base": "rfdist.core.flows.base",
    "rfdist.flows.coupling": "rfdist.core.flows.coupling",
    "rfdist.flows.image": "rfdist.core.flows.image",
    "rfdist.density": "rfdist.core.density",
    "rfdist.model": "rfdist.core.model",
    "rfdist.builders": "rfdist.core.builders",
    "rfdist.engine": "rfdist.core.engine",
    "rfdist.costmodel": "rfdist.core.costmodel",
    "rfdist.s3retry": "rfdist.data.s3retry",
    "rfdist.evaluate": "rfdist.eval.metrics",
    "rfdist.features": "rfdist.eval.features",
    "rfdist.plots": "rfdist.eval.plots",
    "rfdist.lineage": "rfdist.tracking.lineage",
    "rfdist.metric_log": "rfdist.tracking.metric_log",
    "rfdist.metric_names": "rfdist.tracking.metric_names",
    "rfdist.localray": "rfdist.runtime.cluster",
    "rfdist.rendezvous": "rfdist.runtime.rendezvous",
    "rfdist.checkpoint": "rfdist.runtime.checkpoint",
    "rfdist.worker_state": "rfdist.runtime.worker_state",
    "rfdist.epochs": "rfdist.runtime.epochs",
    "rfdist.console": "rfdist.runtime.console",
    "rfdist.system_metrics": "rfdist.runtime.system_metrics",
    "rfdist.train": "rfdist.recipes.train",
    "rfdist.sweep": "rfdist.recipes.sweep",
    "rfdist.score": "rfdist.recipes.score",
    "rfdist.eval_run": "rfdist.recipes.evaluate",
    "rfdist.preflight": "rfdist.recipes.preflight",
    "rfdist.runner": "rfdist.recipes.local",
    "rfdist.submit": "rfdist.recipes.submit",
    "rfdist.jobs_cli": "rfdist.cli.jobs",
    "rfdist.data.cli": "rfdist.cli.data",
}
"""Old module path -> where it lives now."""


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path to the module at its new path."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module is already executed."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once per interpreter)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before PathFinder: an aliased package's __path__
        # would otherwise load a second copy of its submodules under the old name

"""The MLflow pyfunc wrapper of a RectangularFlow, for ``mlflow models serve`` and ``pyfunc.load_model``.

Logged by :func:`rfdist.tracking.models.log_flow_model` as an instance (its pickle names this class
by reference; rfdist's own code travels in the model directory's ``code/``). The flow is rebuilt
from ``spec.json`` and a ``state.pt`` read with ``torch.load(weights_only=True)``.
rfdist's own loader (:func:`rfdist.tracking.models.load_model`) never runs this file from the artifact
store: it rebuilds the flow with the installed rfdist.

``predict`` takes rows of ``D`` floats (data space) and returns per-row log-densities; the
``output`` param selects ``log_prob`` (default), ``reconstruction_error``, ``latent`` or
``sample`` (``count`` rows, ``seed``); ``space`` is ``data`` (default) or ``model``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

__all__ = ["DEFAULT_PARAMS", "OUTPUTS", "InputWidthError", "RectangularFlowPyfunc", "score_rows", "to_data_space"]

OUTPUTS = ("log_prob", "reconstruction_error", "latent", "sample")
DEFAULT_PARAMS: dict[str, Any] = {"output": "log_prob", "space": "data", "count": 1, "seed": 0}


class InputWidthError(ValueError):
    """Rows of the wrong width: the message names the expected and the given width."""


def rows_to_tensor(model_input: Any, data_dim: int) -> torch.Tensor:
    """Rows (DataFrame, array, list) → a float32 ``(N, D)`` tensor; a clear error for the wrong width."""
    values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input
    array = np.asarray(values, dtype=np.float32)
    if array.ndim == 1 and data_dim == array.shape[0]:
        array = array[None, :]
    array = array.reshape(array.shape[0], -1) if array.ndim > 2 else array
    if array.ndim != 2 or array.shape[1] != data_dim:
        got = array.shape[1] if array.ndim == 2 else f"shape {array.shape}"
        raise InputWidthError(f"each input row must have {data_dim} values (x0..x{data_dim - 1}), got {got}")
    return torch.from_numpy(np.ascontiguousarray(array))


def score_rows(model, x: torch.Tensor, preprocess: dict | None) -> dict[str, torch.Tensor]:
    """Per-row ``log_prob`` (data and model space), ``reconstruction_error`` and ``latent`` for flat rows."""
    from rfdist.eval.metrics import preprocess_rows

    prep = preprocess or {}
    with torch.no_grad():
        z, logdet = preprocess_rows(
            x, prep.get("kind", "none"), model.data_shape, lam=prep.get("lam", 1e-6), stats=prep.get("stats")
        )
        log_model = model.log_prob(z).double()
        latent = model.encode(z)
        recon = (model.decode(latent) - z).flatten(1).pow(2).sum(-1).double()
    return {
        "log_prob": log_model + logdet.double(),
        "log_prob_model": log_model,
        "reconstruction_error": recon,
        "latent": latent.reshape(latent.shape[0], -1),
    }


def to_data_space(z: torch.Tensor, preprocess: dict | None) -> torch.Tensor:
    """Flat model-space rows → data space (inverse of the training preprocessing)."""
    prep = preprocess or {}
    if prep.get("kind") == "logit":
        from rfdist.data.preprocess import logit_inverse

        return logit_inverse(z, lam=prep.get("lam", 1e-6))
    if prep.get("kind") == "standardize" and prep.get("stats"):
        stats = prep["stats"]
        return z * torch.as_tensor(stats["std"], dtype=z.dtype) + torch.as_tensor(stats["mean"], dtype=z.dtype)
    return z


class RectangularFlowPyfunc(mlflow.pyfunc.PythonModel):
    """Rebuilds a RectangularFlow from its artifacts; ``predict`` gives log p(x) per row."""

    # rows are checked by the signature (a tensor spec) and rows_to_tensor, not by type hints;
    # without this MLflow prints type-hint advice on every import (as for its own ChatModel)
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from rfdist.core.builders import ModelSpec, build_model

        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        state = torch.load(context.artifacts["state"], map_location="cpu", weights_only=True)
        model = build_model(ModelSpec.from_dict(spec))
        model.load_state_dict(state)
        self.model = model.eval()
        path = context.artifacts.get("preprocess")
        self.preprocess = json.loads(Path(path).read_text()) if path else None
        self.data_dim = int(np.prod(self.model.data_shape))

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        options = {**DEFAULT_PARAMS, **(params or {})}
        output = options["output"]
        if output not in OUTPUTS:
            raise ValueError(f"params.output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if output == "sample":
            torch.manual_seed(int(options["seed"]))
            with torch.no_grad():
                samples = self.model.sample(int(options["count"])).reshape(int(options["count"]), -1)
            if options["space"] == "data":
                samples = to_data_space(samples, self.preprocess)
            return samples.numpy()
        scores = score_rows(self.model, rows_to_tensor(model_input, self.data_dim), self.preprocess)
        if output == "log_prob":
            key = "log_prob_model" if options["space"] == "model" else "log_prob"
            return scores[key].numpy()
        return scores[output].numpy()

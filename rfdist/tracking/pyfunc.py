"""The MLflow pyfunc wrapper of a RectangularFlow, for ``mlflow models serve`` and ``pyfunc.load_model``.

Logged by :func:`rfdist.tracking.models.log_flow_model` as an instance (its pickle names this class
by reference; rfdist's own code travels in the model directory's ``code/``). The flow is rebuilt
from ``spec.json`` and a ``state.pt`` read with ``torch.load(weights_only=True)``.
rfdist's own loader (:func:`rfdist.tracking.models.load_model`) never runs this file from the artifact
store: it rebuilds the flow with the installed rfdist.

``predict`` takes rows of ``D`` floats (data space) and returns per-row log-densities; the
``output`` param selects ``log_prob`` (default), ``reconstruction_error``, ``latent`` or
``sample`` (``count`` rows, ``seed``); ``space`` is ``data`` (default) or ``model``. Params are
checked (:func:`check_params`: known keys and values, ``count`` at most ``RFDIST_SERVE_MAX_COUNT``)
and a refusal is an ``MlflowException``, which the scoring server answers with HTTP 400 and its
message only; non-finite results are ``None`` (JSON ``null``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch

__all__ = [
    "DEFAULT_PARAMS",
    "OUTPUTS",
    "InputWidthError",
    "RectangularFlowPyfunc",
    "check_params",
    "json_safe",
    "score_rows",
    "to_data_space",
]

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
        return z * torch.as_tensor(stats["std"], dtype=z.dtype) + torch.as_tensor(
            stats["mean"], dtype=z.dtype
        )
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
        self.max_count = serve_max_count()

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        options = check_params(params, max_count=getattr(self, "max_count", None) or serve_max_count())
        output = options["output"]
        if output == "sample":
            count = options["count"]
            torch.manual_seed(options["seed"])
            with torch.no_grad():
                samples = self.model.sample(count).reshape(count, -1)
            if options["space"] == "data":
                samples = to_data_space(samples, self.preprocess)
            return json_safe(samples.numpy())
        try:
            rows = rows_to_tensor(model_input, self.data_dim)
        except (InputWidthError, ValueError, TypeError) as exc:
            raise _bad(str(exc).splitlines()[0]) from None
        scores = score_rows(self.model, rows, self.preprocess)
        if output == "log_prob":
            key = "log_prob_model" if options["space"] == "model" else "log_prob"
            return json_safe(scores[key].numpy())
        return json_safe(scores[output].numpy())


SPACES = ("data", "model")


def serve_max_count() -> int:
    """``RFDIST_SERVE_MAX_COUNT`` from the server's environment, else ``rfdist.config.SERVE_MAX_COUNT``."""
    import os

    from rfdist.config import SERVE_MAX_COUNT, SERVE_MAX_COUNT_ENV

    value = os.environ.get(SERVE_MAX_COUNT_ENV, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else SERVE_MAX_COUNT


def _bad(message: str) -> Exception:
    """A refused request: MLflow's scoring server answers an ``MlflowException`` with 400 and its
    message only (any other exception becomes a generic message plus the server's stack trace)."""
    return mlflow.exceptions.MlflowException.invalid_parameter_value(message)


def check_params(params: dict[str, Any] | None, *, max_count: int) -> dict[str, Any]:
    """The request's params over :data:`DEFAULT_PARAMS`, validated (unknown keys and values refused)."""
    given = dict(params or {})
    unknown = sorted(set(given) - set(DEFAULT_PARAMS))
    if unknown:
        raise _bad(f"unknown params {unknown} (known: {', '.join(DEFAULT_PARAMS)})")
    options = {**DEFAULT_PARAMS, **given}
    if options["output"] not in OUTPUTS:
        raise _bad(f"params.output must be one of {', '.join(OUTPUTS)}, got {options['output']!r}")
    if options["space"] not in SPACES:
        raise _bad(f"params.space must be one of {', '.join(SPACES)}, got {options['space']!r}")
    for key in ("count", "seed"):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise _bad(f"params.{key} must be a whole number, got {value!r}")
        options[key] = int(value)
    if not 1 <= options["count"] <= max_count:
        raise _bad(
            f"params.count must be between 1 and {max_count} (RFDIST_SERVE_MAX_COUNT), got {options['count']}"
        )
    if options["seed"] < 0 or options["seed"] >= 2**63:
        raise _bad(f"params.seed must be between 0 and 2**63-1, got {options['seed']}")
    return options


def json_safe(values: np.ndarray) -> np.ndarray:
    """``values`` with NaN/±inf as ``None`` (JSON ``null``): ``json.dumps`` would write ``NaN``,
    which is not JSON. Finite results keep their float dtype."""
    finite = np.isfinite(values)
    if finite.all():
        return values
    out = values.astype(object)
    out[~finite] = None
    return out

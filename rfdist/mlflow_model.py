"""The MLflow "model from code" for a RectangularFlow (logged by :func:`rfdist.tracking.log_flow_model`).

MLflow stores this file with the model and runs it on load, instead of unpickling a Python
object; the flow itself is rebuilt from ``spec.json`` and a ``state.pt`` read with
``torch.load(weights_only=True)``. ``predict`` returns per-row log-densities.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import torch

from rfdist.builders import ModelSpec, build_model


class RectangularFlowPyfunc(mlflow.pyfunc.PythonModel):
    """Rebuilds a RectangularFlow from its artifacts; ``predict`` gives log p(x) per row."""

    def load_context(self, context) -> None:
        spec = json.loads(Path(context.artifacts["spec"]).read_text())
        state = torch.load(context.artifacts["state"], map_location="cpu", weights_only=True)
        model = build_model(ModelSpec.from_dict(spec))
        model.load_state_dict(state)
        self.model = model.eval()

    def predict(self, context, model_input, params=None):
        values = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        x = torch.as_tensor(np.array(values, dtype=np.float32))
        x = x.reshape(x.shape[0], *self.model.data_shape)
        with torch.no_grad():
            return self.model.log_prob(x).numpy()


mlflow.models.set_model(RectangularFlowPyfunc())

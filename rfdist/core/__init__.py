"""Pure PyTorch — no Ray, no MLflow: usable as a plain library (and by the GPU kit without them).

- :mod:`rfdist.core.volume` — ½ log det(JᵀJ): exact (forward-mode), the Hutchinson + CG surrogate;
- :mod:`rfdist.core.flows` — bijective layers: vector couplings (zuko) and multi-scale image flows;
- :mod:`rfdist.core.density` — the low-dimensional density p_U;
- :mod:`rfdist.core.model` — :class:`~rfdist.core.model.RectangularFlow`: encode, decode, log_prob, loss;
- :mod:`rfdist.core.builders` — :class:`~rfdist.core.builders.ModelSpec` → a model;
- :mod:`rfdist.core.engine` — one training step, ``fit``, the optimizer and schedule;
- :mod:`rfdist.core.costmodel` — which estimator is cheapest for a shape (``estimator.name=auto``).
"""

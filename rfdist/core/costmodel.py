"""``estimator: auto``: exact or hutchinson, whichever is cheaper for this model, batch and device.

Training resolves ``auto`` by measurement (:func:`measure_estimators` +
:func:`choose_measured`): one warm-up and one timed forward+backward of each estimator on the
first batch, on the worker's own device (the bench's d-sweep showed why: on a small tabular
flow at D=64 exact stays cheaper than hutchinson up to d=40 on CPU, while at the MNIST shape
exact costs 3× hutchinson at d=20 — the ratio depends on the architecture, not on d alone).
The static model below is the fallback where nothing can be measured (``RunConfig.loss_options``
outside a worker):

Step cost in units of the two-step step (no volume term) of the same model and batch:

- exact: ``a + b·d`` — one vmapped forward-mode pass over ``d`` basis tangents plus its
  backward; linear in ``d`` (memory too, unless chunked);
- hutchinson: ``c + e·K·m`` — ``m`` (preconditioned) CG matvecs ``JᵀJv`` on ``K·B`` rows, the
  preconditioner's pass and the two differentiable vjps; independent of ``d`` at a fixed budget.

The coefficients were fitted to ``bench/estimators.py``'s mnist rows (conv flow, B=50) on this
project's idle 2-core CPU: exact 16.7× at d=20, hutchinson 5.1× at K=1 and 17.6× at K=4 with
the default 4-iteration budget (README "Performance"). They overstate exact's cost for small
tabular flows (d-sweep at D=64: exact 2.3× at d=2 to 4.5× at d=40), which is why training
measures instead. Exact also wins on accuracy (no probe noise), so ties go to exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from torch import Tensor, nn

    from rfdist.core.engine import LossOptions

__all__ = ["CostModel", "choose_estimator", "choose_measured", "measure_estimators"]

#: Hutchinson must be this much faster than exact to be chosen: exact has no probe noise.
HUTCHINSON_MARGIN = 1.2


@dataclass(frozen=True)
class CostModel:
    """Relative step costs (× the two-step step); see the module docstring."""

    exact_base: float = 1.0
    exact_per_dim: float = 0.8
    hutch_base: float = 1.0
    hutch_per_matvec: float = 1.0

    def exact(self, d: int) -> float:
        return self.exact_base + self.exact_per_dim * d

    def hutchinson(self, num_samples: int, matvecs: int) -> float:
        return self.hutch_base + self.hutch_per_matvec * num_samples * matvecs


COST_MODELS: dict[str, CostModel] = {"cpu": CostModel(), "cuda": CostModel()}


def choose_estimator(
    latent_dim: int,
    *,
    num_samples: int = 1,
    matvecs: int = 4,
    device: str = "cpu",
) -> Literal["exact", "hutchinson"]:
    """The cheaper estimator for manifold dimension ``latent_dim`` on ``device`` (ties: exact).

    Example:
        >>> choose_estimator(2), choose_estimator(200)
        ('exact', 'hutchinson')
    """
    model = COST_MODELS.get(device.split(":")[0], COST_MODELS["cpu"])
    cheaper = model.exact(latent_dim) <= model.hutchinson(num_samples, matvecs)
    return "exact" if cheaper else "hutchinson"


def measure_estimators(
    model: nn.Module, x: Tensor, options: LossOptions, *, repeats: int = 1
) -> dict[str, float]:
    """Seconds of one forward+backward of ``model.loss`` per estimator on batch ``x``.

    ``options`` gives everything but the estimator (its CG budget, ``num_samples``,
    ``chunk_size``). One untimed warm-up each, then the median of ``repeats`` timed runs; the
    gradients are discarded (``model`` is unchanged). An estimator that runs out of device
    memory costs ``inf``. Pass the bare model, not a DDP wrapper (no collectives here).

    Example:
        >>> import torch
        >>> from rfdist import ModelSpec, build_model
        >>> from rfdist.core.engine import LossOptions
        >>> model = build_model(ModelSpec(data_shape=(3,), latent_dim=1))
        >>> sorted(measure_estimators(model, torch.randn(16, 3), LossOptions()))
        ['exact', 'hutchinson']
    """
    import torch

    def run(opts: LossOptions) -> None:
        loss, _ = model.loss(x, **opts.kwargs())
        loss.backward()
        model.zero_grad(set_to_none=True)

    def timed(opts: LossOptions) -> float:
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        try:
            run(opts)  # warm-up (allocator, kernels)
            samples = []
            for _ in range(max(1, repeats)):
                sync()
                start = time.perf_counter()
                run(opts)
                sync()
                samples.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            model.zero_grad(set_to_none=True)
            if x.device.type == "cuda":
                torch.cuda.empty_cache()
            return float("inf")
        return sorted(samples)[len(samples) // 2]

    return {name: timed(replace(options, estimator=name)) for name in ("exact", "hutchinson")}


def choose_measured(
    seconds: dict[str, float], *, margin: float = HUTCHINSON_MARGIN
) -> Literal["exact", "hutchinson"]:
    """``hutchinson`` only if it is ``margin``× faster than exact (exact has no probe noise).

    Example:
        >>> choose_measured({"exact": 1.0, "hutchinson": 0.9}), choose_measured({"exact": 3.0, "hutchinson": 1.0})
        ('exact', 'hutchinson')
    """
    return "hutchinson" if seconds["hutchinson"] * margin < seconds["exact"] else "exact"

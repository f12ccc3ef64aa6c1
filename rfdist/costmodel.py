"""``estimator: auto``: exact or hutchinson, whichever a measured cost model says is cheaper.

Step cost in units of the two-step step (no volume term) of the same model and batch:

- exact: ``a + b·d`` — one vmapped forward-mode pass over ``d`` basis tangents plus its
  backward; linear in ``d`` (memory too, unless chunked);
- hutchinson: ``c + e·K·m`` — ``m`` (preconditioned) CG matvecs ``JᵀJv`` on ``K·B`` rows, the
  preconditioner's pass and the two differentiable vjps; independent of ``d`` at a fixed budget.

The coefficients were fitted to ``bench/estimators.py``'s mnist rows on this project's CPU
machine (exact 9.8× at d=20; hutchinson 3.4× at K=1 and 10.9× at K=4 with a 4-matvec budget;
see the README's performance table) — the d-sweep should refine them; on CUDA the same
coefficients are used until measured there (forward-mode AD is not decomposed on CUDA, which
favours exact further, so the rule errs towards hutchinson). Exact also wins on accuracy (no
probe noise), so ties go to exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CostModel", "choose_estimator"]


@dataclass(frozen=True)
class CostModel:
    """Relative step costs (× the two-step step); see the module docstring."""

    exact_base: float = 1.0
    exact_per_dim: float = 0.45
    hutch_base: float = 1.0
    hutch_per_matvec: float = 0.6

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

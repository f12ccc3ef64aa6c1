"""The volume estimator's settings: one record, one home for every default.

:class:`EstimatorOptions` is what :func:`~rfdist.core.volume.logdet_surrogate`,
:meth:`~rfdist.core.model.RectangularFlow.loss`, the engine (:class:`~rfdist.core.engine.LossOptions`,
``fit``) and the run config's ``estimator`` section (:class:`rfdist.config.EstimatorConfig`) all
take their defaults from (:data:`DEFAULTS`), so a library user trains the same estimator as
``rfdist train``. Three settings are ``d``-aware when unset (``None``): the CG budget, the rows of
the Gram preconditioner and its rebuild period; :meth:`EstimatorOptions.resolved` fills them in
for a latent dimension and a (per-process) batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

__all__ = [
    "BETA",
    "DEFAULTS",
    "GRAM_REUSE_STEPS",
    "LIKELIHOOD_WEIGHT",
    "MODE",
    "PRECONDITIONED_CG_BUDGET",
    "EstimatorName",
    "EstimatorOptions",
    "MatvecMode",
    "PreconditionerKind",
    "Probe",
    "merge_options",
]

EstimatorName = Literal["exact", "hutchinson", "auto"]
Probe = Literal["gaussian", "rademacher"]
MatvecMode = Literal["jvp", "vjp"]
PreconditionerKind = Literal["none", "gram"]

#: the loss's own defaults (beside the estimator's): maximum likelihood, the reconstruction
#: weight β of the paper's tabular runs, the full likelihood term (no warm-up)
MODE: Literal["ml", "two_step"] = "ml"
BETA = 50.0
LIKELIHOOD_WEIGHT = 1.0

#: CG iterations per step with the ``gram`` preconditioner when ``cg_max_iters`` is unset
#: (bench/estimators.py: the gradient error of the reference's 13 plain iterations, K=1 probe
#: noise dominating the truncation, at ≤ 6 matvec-equivalents a step and no host sync).
PRECONDITIONED_CG_BUDGET = 4
#: steps between Gram preconditioner rebuilds where even one row of it costs ~2 matvecs
GRAM_REUSE_STEPS = 8

_CHOICES = {
    "name": ("exact", "hutchinson", "auto"),
    "probe": ("gaussian", "rademacher"),
    "matvec": ("jvp", "vjp"),
    "preconditioner": ("none", "gram"),
}
_MINIMUM = {
    "num_samples": 1,
    "cg_tol": 0,
    "cg_max_iters": 1,
    "chunk_size": 1,
    "precond_rows": 1,
    "precond_every": 1,
    "check_every": 0,
    "max_jitter_tries": 0,
    "precond_ridge": 0,
}


@dataclass(frozen=True)
class EstimatorOptions:
    """How the volume term's gradient is computed (the defaults are ``rfdist train``'s).

    Attributes:
        name: ``exact`` (Cholesky of the exact JᵀJ), ``hutchinson`` (the CG surrogate of
            :func:`~rfdist.core.volume.logdet_surrogate`) or ``auto`` (chosen by the trainer
            through :mod:`rfdist.core.costmodel`; a loss needs it resolved first).
        num_samples: Hutchinson probes per row, ``K``.
        cg_tol: CG relative-residual tolerance.
        cg_max_iters: CG budget; ``None``: :data:`PRECONDITIONED_CG_BUDGET` (at most ``d``) with
            the ``gram`` preconditioner, ``d`` without.
        probe: ``gaussian`` or ``rademacher``.
        chunk_size: tangents per pass of the exact estimator (bounds memory).
        matvec: ``vjp`` (reverse-mode products, cheaper on CPU) or ``jvp`` (forward mode).
        preconditioner: ``gram`` (mean exact JᵀJ of ``precond_rows`` rows) or ``none``.
        precond_rows: rows of the Gram preconditioner; ``None``: ``d``-aware, see
            :meth:`gram_rows`.
        precond_every: steps between Gram rebuilds; ``None``: ``d``-aware, see :meth:`gram_every`.
        check_every: CG iterations between host-synchronising convergence checks (0 = never).
        max_jitter_tries: Cholesky retries with growing jitter (exact estimator).
        precond_ridge: ridge × mean diagonal added to the Gram preconditioner (keeps it SPD).
    """

    name: EstimatorName = "exact"
    num_samples: int = 1
    cg_tol: float = 1e-4
    cg_max_iters: int | None = None
    probe: Probe = "gaussian"
    chunk_size: int | None = None
    matvec: MatvecMode = "vjp"
    preconditioner: PreconditionerKind = "gram"
    precond_rows: int | None = None
    precond_every: int | None = None
    check_every: int = 4
    max_jitter_tries: int = 3
    precond_ridge: float = 1e-3

    def __post_init__(self) -> None:
        for key, allowed in _CHOICES.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        for key, low in _MINIMUM.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")

    def updated(self, **overrides: Any) -> EstimatorOptions:
        """A copy with ``overrides`` applied; an unknown key is a ``TypeError`` naming it."""
        unknown = sorted(set(overrides) - self.field_names())
        if unknown:
            raise TypeError(f"unknown estimator option(s): {', '.join(unknown)}")
        return replace(self, **overrides) if overrides else self

    @classmethod
    def field_names(cls) -> set[str]:
        """The names of every setting."""
        return {f.name for f in fields(cls)}

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (shallow)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def cg_budget(self, latent_dim: int) -> int:
        """CG iterations per solve: ``cg_max_iters``, else the preconditioned default or ``d``."""
        if self.cg_max_iters is not None:
            return self.cg_max_iters
        if self.preconditioner == "gram":
            return min(PRECONDITIONED_CG_BUDGET, latent_dim)
        return latent_dim

    def gram_rows(self, latent_dim: int, batch: int) -> int:
        """Rows of the ``gram`` preconditioner: ``precond_rows``, else ``d``-aware (1 to 8).

        Building it costs ``rows·d`` tangent rows; by default rows are capped so that this is at
        most ~2 matvec-equivalents (``2·K·batch`` rows each): at MNIST's d=20, B=50 that is 8
        rows, at 64×64×3 with d=64, B=16 one row (8 rows there cost 16 matvecs and 7× the
        two-step step; bench/estimators.py --shapes image64).
        """
        if self.precond_rows is not None:
            return self.precond_rows
        return max(1, min(8, 4 * self.num_samples * batch // max(latent_dim, 1)))

    def gram_every(self, latent_dim: int, batch: int) -> int:
        """Steps between rebuilds of the ``gram`` preconditioner: ``precond_every``, else 1, or
        :data:`GRAM_REUSE_STEPS` where :meth:`gram_rows`' cost cap binds (``4·K·batch < 8·d``:
        even one row costs ~2 matvecs). Reused there it costs ≤ 0.25 matvec a step."""
        if self.precond_every is not None:
            return self.precond_every
        return GRAM_REUSE_STEPS if 4 * self.num_samples * batch < 8 * latent_dim else 1

    def resolved(self, latent_dim: int, batch: int) -> EstimatorOptions:
        """The ``d``-aware settings filled in for latent dimension ``d`` and this batch size."""
        return replace(
            self,
            cg_max_iters=self.cg_budget(latent_dim),
            precond_rows=self.gram_rows(latent_dim, batch),
            precond_every=self.gram_every(latent_dim, batch),
        )


#: The defaults every entry point shares.
DEFAULTS = EstimatorOptions()


def merge_options(
    options: EstimatorOptions | None, overrides: dict[str, Any], *, where: str
) -> EstimatorOptions:
    """``options`` (default :data:`DEFAULTS`) with keyword ``overrides``; errors name ``where``."""
    base = DEFAULTS if options is None else options
    if not isinstance(base, EstimatorOptions):
        raise TypeError(f"{where}: options must be an EstimatorOptions, got {type(base).__name__}")
    try:
        return base.updated(**overrides)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None

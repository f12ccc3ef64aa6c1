r"""RectangularFlow: an injective flow :math:`g` onto a learned manifold plus a density on it.

:math:`g(u) = f(\mathrm{pad}(u))` maps :math:`u\in\mathbb{R}^d` into data space
:math:`\mathbb{R}^D` (``pad`` places ``u`` at fixed latent positions, zeros elsewhere; ``f`` is a
``D``-dimensional bijection); the left inverse :math:`g^\dagger(x)` runs ``f`` backwards and keeps
those positions. With :math:`u = g^\dagger(x)` and :math:`J = \partial g/\partial u`:

.. math:: \log p(x) = \log p_U(u) - \tfrac12 \log\det(J^\top J)

the density of the projection of ``x`` onto the manifold, w.r.t. the manifold's volume.
Plain PyTorch; nothing here knows about Ray or MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rfdist.core.density import LatentDensity
from rfdist.core.flows.base import Bijection
from rfdist.core.options import BETA, LIKELIHOOD_WEIGHT, MODE, EstimatorOptions, merge_options
from rfdist.core.volume import (
    GramCache,
    TangentOps,
    VolumeStats,
    logdet_column,
    logdet_exact,
    logdet_surrogate,
)

__all__ = ["RectangularFlow"]

Mode = Literal["ml", "two_step"]
Estimator = Literal["exact", "hutchinson"]


class RectangularFlow(nn.Module):
    """Injective flow ``g: R^d → R^D`` with a flow density ``p_U`` on ``R^d``.

    Arguments:
        flow: the ``D``-dimensional bijection ``f`` (``forward`` = latent → data).
        density: the low-dimensional density ``p_U``.
        data_shape: shape of one data row, e.g. ``(2,)`` or ``(1, 28, 28)``.
        latent_index: the ``d`` latent positions (in the flattened ``D`` latent) that carry
            ``u``; default the first ``d``, or the deepest scale's for a multi-scale flow.

    Example:
        >>> from rfdist.core.flows import vector_flow
        >>> from rfdist.core.density import LatentDensity
        >>> model = RectangularFlow(vector_flow(3, layers=2, hidden=(16,)),
        ...                         LatentDensity(2, layers=1, hidden=(8,)), data_shape=(3,))
        >>> x = torch.randn(4, 3)
        >>> model.log_prob(x).shape
        torch.Size([4])
        >>> loss, parts = model.loss(x, estimator="hutchinson")
        >>> loss.backward()
    """

    def __init__(
        self,
        flow: Bijection,
        density: LatentDensity,
        *,
        data_shape: Sequence[int],
        latent_index: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.flow = flow
        self.density = density
        self.data_shape = tuple(int(s) for s in data_shape)
        self.data_dim = math.prod(self.data_shape)
        self.latent_dim = density.features
        if not 1 <= self.latent_dim < self.data_dim:
            raise ValueError(f"latent dimension d={self.latent_dim} must satisfy 1 <= d < D={self.data_dim}")
        if latent_index is None:
            order = flow.latent_order() if hasattr(flow, "latent_order") else torch.arange(self.data_dim)
            latent_index = order[: self.latent_dim]
        latent_index = torch.as_tensor(latent_index, dtype=torch.long)
        if latent_index.shape != (self.latent_dim,) or latent_index.unique().numel() != self.latent_dim:
            raise ValueError(f"latent_index must hold {self.latent_dim} distinct positions")
        self.register_buffer("latent_index", latent_index.clone())
        #: whether :meth:`round_trip` shares the innermost coupling (a fixed property of the layout)
        self.share_innermost = self._can_share_innermost()

    # ----------------------------------------------------------------- the maps
    def pad(self, u: Tensor) -> Tensor:
        """``(B, d)`` → ``(B, D)`` latent with ``u`` at :attr:`latent_index`, zeros elsewhere."""
        return u.new_zeros(u.shape[0], self.data_dim).index_copy(1, self.latent_index, u)

    def decode(self, u: Tensor) -> Tensor:
        """:math:`g(u)`: latent ``(B, d)`` → data ``(B, *data_shape)`` on the manifold."""
        return self.flow(self.pad(u).view(u.shape[0], *self.data_shape))

    def decode_flat(self, u: Tensor) -> Tensor:
        """:math:`g(u)` flattened to ``(B, D)`` (the map whose Jacobian the volume term uses)."""
        return self.decode(u).flatten(1)

    def tangent_ops(self) -> TangentOps | None:
        """Hand-written derivatives of :meth:`decode_flat` when every flow layer has them.

        Vector flows of :class:`~rfdist.core.flows.AffineCoupling` / ``ActNorm`` / ``Permutation``
        do; others (splines, image flows) return ``None`` and the estimators use ``torch.func``.
        """
        if not self._has_tangents():
            return None
        index, dim = self.latent_index, self.data_dim

        def pad(t: Tensor) -> Tensor:
            return t.new_zeros(*t.shape[:-1], dim).index_copy(-1, index, t)

        def push(u: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return self.flow.forward_and_tangent(pad(u), pad(t))

        def linearize(u: Tensor, differentiable: bool = False):
            out, lin = self.flow.linearize(pad(u), differentiable=differentiable)
            return out, (lambda t: lin.jvp(pad(t))), (lambda w: lin.vjp(w).index_select(-1, index))

        return TangentOps(push, linearize)

    def _has_tangents(self) -> bool:
        return len(self.data_shape) == 1 and getattr(self.flow, "supports_tangents", False)

    def round_trip(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``u = encode(x)`` and ``decode_flat(u)`` in one pass (the two-step loss's maps).

        When the innermost coupling conditions on exactly the latent positions (a vector flow of
        alternating checkered couplings at ``D = 2, d = 1``: von Mises), ``decode`` feeds it the
        same conditioning half as ``encode`` and zeros as the other half, so its output there is
        its shift: one conditioner evaluation serves both, and that layer's inverse half (which
        ``encode`` drops) is skipped. Same values and gradients as the two calls.
        """
        if not self.share_innermost:
            u = self.encode(x)
            return u, self.decode_flat(u)
        layers = list(self.flow.layers)
        a, b = layers[-1]._split(x.flatten(1))  # (conditioning, transformed) halves
        for layer in layers[:0:-1]:
            a, b = layer.inverse_half(a, b)[0], a
        u = a  # the innermost layer's conditioning half: the latent positions, in order
        a, b = layers[0].conditioner(u)[0], u  # its output half: the shift (zero padding in)
        for layer in layers[1:]:
            a, b = layer.forward_half(a, b)[0], a
        return u, layers[-1]._merge(b, a)

    def round_trip_tangent(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``u = encode(x)``, ``decode_flat(u)`` and the Jacobian's one column ``∂decode_flat/∂u``
        ``(B, D)``, at ``d = 1`` on a flow with hand-written tangents (the exact estimator's
        fast path: one tangent, no vmap, no Gram matrix). Shares the innermost coupling as
        :meth:`round_trip` does where it can; there the tangent enters that layer's
        conditioner only (the zero padding has a zero tangent)."""
        if self.latent_dim != 1 or not self._has_tangents():
            raise ValueError("round_trip_tangent needs d = 1 and a flow with hand-written tangents")
        if not self.share_innermost:
            u = self.encode(x)
            padded = self.pad(u)
            return u, *self.flow.forward_and_tangent(padded, self.pad(torch.ones_like(u)))
        layers = list(self.flow.layers)
        a, b = layers[-1]._split(x.flatten(1))
        for layer in layers[:0:-1]:
            a, b = layer.inverse_half(a, b)[0], a
        u = a
        shift, dshift = layers[0].conditioner_and_tangent(u, torch.ones_like(u))[:2]
        a, b, ta, tb = shift, u, dshift, torch.ones_like(u)
        for layer in layers[1:]:
            new, t_new = layer.forward_half_and_tangent(a, b, ta, tb)
            a, b, ta, tb = new, a, t_new, ta
        return u, layers[-1]._merge(b, a), layers[-1]._merge(tb, ta)

    def _can_share_innermost(self) -> bool:
        """Whether :meth:`round_trip` can share the innermost coupling (checked once, at init)."""
        layers = list(getattr(self.flow, "layers", ()))
        if len(self.data_shape) != 1 or not layers or not hasattr(layers[0], "conditioner"):
            return False
        strides = [getattr(layer, "half_stride", None) for layer in layers]
        if strides[0] is None or any(s != (strides[0] + i) % 2 for i, s in enumerate(strides)):
            return False  # not one run of alternating checkered couplings
        return layers[0].idx_a.tolist() == self.latent_index.tolist()

    def encode(self, x: Tensor) -> Tensor:
        """:math:`g^\\dagger(x)`: data ``(B, *data_shape)`` → latent ``(B, d)``."""
        return self.flow.inverse(x).flatten(1).index_select(1, self.latent_index)

    def project(self, x: Tensor) -> Tensor:
        """The point of the learned manifold that ``x`` maps to, ``g(g†(x))``."""
        return self.decode(self.encode(x))

    # ------------------------------------------------------------- densities
    def log_prob(self, x: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """Exact on-manifold log-density of the projection of each row of ``x``, ``(B,)``."""
        u = self.encode(x)
        logdet = logdet_exact(self.decode_flat, u, chunk_size=chunk_size, tangents=self.tangent_ops())
        return self.density.log_prob(u) - 0.5 * logdet

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """``n`` samples in data space, ``(n, *data_shape)``."""
        return self.decode(self.density.sample(n))

    # ------------------------------------------------------------------ loss
    def loss(
        self,
        x: Tensor,
        *,
        mode: Mode = MODE,
        beta: float = BETA,
        likelihood_weight: float = LIKELIHOOD_WEIGHT,
        options: EstimatorOptions | None = None,
        **overrides: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        r"""Mean training loss over the batch and its detached parts.

        ``mode="ml"``: :math:`-w[\log p_U(u) - \tfrac12\log\det J^\top J] + \beta\|x-g(u)\|^2`
        with the volume term from the estimator ``options.name`` (``exact`` or ``hutchinson``;
        the latter's value is a gradient surrogate, reported as ``logdet_surrogate``, never as
        an NLL). ``mode="two_step"``: :math:`\beta\|x-g(u)\|^2 - \log p_U(\mathrm{sg}(u))`.

        ``options`` (default :data:`~rfdist.core.options.DEFAULTS`, those of ``rfdist train``)
        and keyword ``overrides`` of its fields (``estimator=`` is accepted for ``name``) set the
        estimator; its ``d``-aware settings are resolved for this batch. With the ``gram``
        preconditioner rebuilt every ``precond_every`` > 1 steps, it is kept in a
        :class:`~rfdist.core.volume.GramCache` on this model.

        Returns:
            ``(loss, parts)``; ``parts`` holds 0-dim detached tensors: ``loss``, ``log_pu``,
            ``reconstruction``, and ``logdet`` + ``nll`` (exact) or ``logdet_surrogate`` + CG
            statistics (hutchinson).
        """
        if mode not in ("ml", "two_step"):
            raise ValueError(f"mode must be 'ml' or 'two_step', got {mode!r}")
        if "estimator" in overrides:
            if "name" in overrides:
                raise TypeError("loss: give the estimator as name= or estimator=, not both")
            overrides["name"] = overrides.pop("estimator")
        opts = merge_options(options, overrides, where="loss")
        x_flat = x.flatten(1)
        parts: dict[str, Tensor] = {}
        if mode == "two_step":
            u, recon_x = self.round_trip(x)
            log_pu = self.density.log_prob(u.detach())
            reconstruction = (x_flat - recon_x).pow(2).sum(-1)
            loss = (beta * reconstruction - log_pu).mean()
        else:
            u, log_pu, logdet, recon_x = self._ml_terms(x, opts, parts)
            reconstruction = (x_flat - recon_x).pow(2).sum(-1)
            loss = (-likelihood_weight * (log_pu - 0.5 * logdet) + beta * reconstruction).mean()
        parts["loss"] = loss.detach()
        parts["log_pu"] = log_pu.detach().mean()
        parts["reconstruction"] = reconstruction.detach().mean()
        return loss, parts

    def _ml_terms(
        self, x: Tensor, opts: EstimatorOptions, parts: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``u``, ``log p_U(u)``, the volume term (or its surrogate) and ``decode_flat(u)``.

        The exact estimator at ``d = 1`` on a flow with hand-written tangents takes
        :meth:`round_trip_tangent` (one column, ``log ‖J‖²``); everything else
        :meth:`_volume_term`.
        """
        if opts.name == "exact" and opts.chunk_size is None and self.latent_dim == 1 and self._has_tangents():
            u, recon_x, column = self.round_trip_tangent(x)
            log_pu = self.density.log_prob(u)
            logdet = logdet_column(column)
            parts["logdet"] = logdet.detach().mean()
            parts["nll"] = -(log_pu - 0.5 * logdet).detach().mean()
            parts["tangent_passes"] = u.new_tensor(1.0)
            return u, log_pu, logdet, recon_x
        u = self.encode(x)
        log_pu = self.density.log_prob(u)
        logdet, recon_x = self._volume_term(u, log_pu, opts, parts)
        return u, log_pu, logdet, recon_x

    def _volume_term(
        self, u: Tensor, log_pu: Tensor, opts: EstimatorOptions, parts: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """``(log det or its surrogate, decode_flat(u))`` by ``opts.name``; fills ``parts``."""
        stats = VolumeStats()
        if opts.name == "exact":
            logdet, recon_x = logdet_exact(
                self.decode_flat,
                u,
                chunk_size=opts.chunk_size,
                max_jitter_tries=opts.max_jitter_tries,
                stats=stats,
                return_output=True,
                tangents=self.tangent_ops(),
            )
            parts["logdet"] = logdet.detach().mean()
            parts["nll"] = -(log_pu - 0.5 * logdet).detach().mean()
        elif opts.name == "hutchinson":
            batch, d = u.shape
            every = opts.gram_every(d, batch) if opts.preconditioner == "gram" else 1
            logdet, recon_x = logdet_surrogate(
                self.decode_flat,
                u,
                opts,
                stats=stats,
                return_output=True,
                tangents=self.tangent_ops(),
                precond_cache=self._gram_cache(every),
            )
            parts["logdet_surrogate"] = logdet.detach().mean()
            parts["cg_iterations"] = stats.cg_iterations
            parts["cg_residual"] = stats.cg_residual
            parts["matvecs"] = u.new_tensor(float(stats.matvecs))
            if "precond_tangent_rows" in stats.extra:
                parts["precond_tangent_rows"] = stats.extra["precond_tangent_rows"]
        else:
            raise ValueError(
                f"estimator must be 'exact' or 'hutchinson' (resolve 'auto' with rfdist.core.costmodel), "
                f"got {opts.name!r}"
            )
        parts["tangent_passes"] = u.new_tensor(float(stats.tangent_passes))
        return logdet, recon_x

    def _gram_cache(self, every: int) -> GramCache | None:
        """This model's :class:`~rfdist.core.volume.GramCache` (kept across steps), or ``None`` at 1."""
        if every <= 1:
            return None
        cache = self.__dict__.get("_gram_cache_state")
        if cache is None or cache.every != every:
            cache = self.__dict__["_gram_cache_state"] = GramCache(every)
        return cache

    def compile_loss(self, enabled: bool = True, **compile_options: Any) -> None:
        """Route :meth:`forward` (what ``train_step`` and a DDP wrapper call) through
        ``torch.compile(self.loss)``, or back to eager with ``enabled=False``.

        Off by default: at small shapes (von Mises) inductor's fused kernels cut a step's
        per-op dispatch, but compiling takes tens of seconds on a CPU, a new batch shape or
        loss setting recompiles, and at large shapes the arithmetic dominates anyway
        (``bench/estimators.py --compile``). The parameters and state-dict keys are unchanged.
        The graph breaks (and the rest still compiles) where the options are merged, where CG
        checks convergence on the host and around a kept Gram preconditioner.
        """
        if enabled:
            self.__dict__["_compiled_loss"] = torch.compile(self.loss, **compile_options)
        else:
            self.__dict__.pop("_compiled_loss", None)

    def forward(self, x: Tensor, **loss_options) -> tuple[Tensor, dict[str, Tensor]]:
        """Same as :meth:`loss`, so a ``DistributedDataParallel`` wrapper syncs gradients
        (through ``torch.compile`` after :meth:`compile_loss`)."""
        compiled = self.__dict__.get("_compiled_loss")
        return (compiled or self.loss)(x, **loss_options)

"""The minimal contract every bijective layer in rfdist follows, and its generic layers.

Direction convention: ``forward`` maps the latent side to the data side (the generative
direction, the one :math:`g = f \\circ \\mathrm{pad}` differentiates); ``inverse`` maps data to
latent. Both are single passes, and every layer is plain torch so that ``torch.func.jvp``,
``vjp`` and ``vmap`` work through it without hand-written derivatives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["ActNorm", "Bijection", "Chain", "Linearization", "Permutation"]


class Linearization(NamedTuple):
    """The Jacobian of a layer at a fixed point, as two matrix-free maps (no autograd).

    ``jvp(t)``: ``(..., B, D_in) -> (..., B, D_out)``; ``vjp(u)``: the transpose. Leading
    dimensions index independent tangents (probes, CG systems); values are detached.
    """

    jvp: Callable[[Tensor], Tensor]
    vjp: Callable[[Tensor], Tensor]


class Bijection(nn.Module):
    """A bijective layer: ``forward`` (latent → data), ``inverse`` and log-determinants.

    Subclasses implement :meth:`forward_and_ladj` and :meth:`inverse_and_ladj`; ``ladj`` is
    ``log |det ∂out/∂in|`` per row (shape ``(B,)``).

    Example:
        >>> layer = ActNorm(3)
        >>> x = torch.randn(4, 3)
        >>> torch.allclose(layer.inverse(layer(x)), x)
        True
    """

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    #: whether :meth:`forward_and_tangent` and :meth:`linearize` are implemented by hand
    supports_tangents: bool = False

    def forward(self, z: Tensor) -> Tensor:
        return self.forward_and_ladj(z)[0]

    def inverse(self, x: Tensor) -> Tensor:
        """Data side → latent side."""
        return self.inverse_and_ladj(x)[0]

    def forward_and_tangent(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``forward(z)`` and the Jacobian applied to tangents ``t`` (``(..., *z.shape)``).

        Hand-written forward mode in plain, differentiable torch ops: one primal pass shared
        by all tangents, several times cheaper than ``torch.func.jvp`` at small shapes.
        """
        raise NotImplementedError(f"{type(self).__name__} has no hand-written tangents")

    def linearize(self, z: Tensor, *, differentiable: bool = False) -> tuple[Tensor, Linearization]:
        """``forward(z)`` and its :class:`Linearization` at ``z``, for CG matvecs.

        Detached by default; with ``differentiable`` the output and the products keep their
        graph to ``z`` and the parameters (products taken under ``no_grad`` stay cheap), so one
        primal pass serves both the CG solve and the differentiable tangent pass.
        """
        raise NotImplementedError(f"{type(self).__name__} has no hand-written tangents")


class Chain(Bijection):
    """Composition of bijections; ``forward`` applies them in order, ``inverse`` in reverse."""

    def __init__(self, layers: Iterable[Bijection]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(z, list(self.layers), inverse=False, ladj=True)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x, list(self.layers)[::-1], inverse=True, ladj=True)

    def forward(self, z: Tensor) -> Tensor:
        return self._run(z, list(self.layers), inverse=False, ladj=False)[0]

    def inverse(self, x: Tensor) -> Tensor:
        return self._run(x, list(self.layers)[::-1], inverse=True, ladj=False)[0]

    @staticmethod
    def _run(z: Tensor, layers: list[Bijection], *, inverse: bool, ladj: bool) -> tuple[Tensor, Tensor]:
        """Apply ``layers`` in the given order (each forward, or each inverse), summing log-dets
        when ``ladj``. Consecutive couplings with alternating checkered masks (``half_stride``
        0, 1, 0, …) pass their two halves along instead of merging and re-splitting: one
        layer's transformed half is the next one's conditioning half (same maths, fewer ops)."""
        total = z.new_zeros(z.shape[0]) if ladj else z
        i = 0
        while i < len(layers):
            j = _coupling_run_end(layers, i)
            if j - i == 1:  # a lone layer
                layer = layers[i]
                if ladj:
                    z, step = layer.inverse_and_ladj(z) if inverse else layer.forward_and_ladj(z)
                    total = total + step
                else:
                    z = layer.inverse(z) if inverse else layer(z)
            else:
                a, b = layers[i]._split(z)  # (conditioning, transformed) halves of layers[i]
                for layer in layers[i:j]:
                    new, log_scale = layer.inverse_half(a, b) if inverse else layer.forward_half(a, b)
                    if ladj:
                        total = total - log_scale.sum(-1) if inverse else total + log_scale.sum(-1)
                    a, b = new, a  # the next layer conditions on the half just transformed
                z = layers[j - 1]._merge(b, a)
            i = j
        return z, total

    @property
    def supports_tangents(self) -> bool:  # type: ignore[override]
        return all(layer.supports_tangents for layer in self.layers)

    def forward_and_tangent(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Each layer's :meth:`~Bijection.forward_and_tangent` in turn; runs of alternating
        checkered couplings pass halves of ``z`` and ``t`` along, as :meth:`_run` does."""
        layers, i = list(self.layers), 0
        while i < len(layers):
            j = _coupling_run_end(layers, i)
            if j - i == 1:
                z, t = layers[i].forward_and_tangent(z, t)
            else:
                (a, b), (ta, tb) = layers[i]._split(z), layers[i]._split(t)
                for layer in layers[i:j]:
                    new, t_new = layer.forward_half_and_tangent(a, b, ta, tb)
                    a, b, ta, tb = new, a, t_new, ta
                z, t = layers[j - 1]._merge(b, a), layers[j - 1]._merge(tb, ta)
            i = j
        return z, t

    def linearize(self, z: Tensor, *, differentiable: bool = False) -> tuple[Tensor, Linearization]:
        parts = []
        for layer in self.layers:
            z, lin = layer.linearize(z, differentiable=differentiable)
            parts.append(lin)

        def jvp(t: Tensor) -> Tensor:
            for lin in parts:
                t = lin.jvp(t)
            return t

        def vjp(u: Tensor) -> Tensor:
            for lin in reversed(parts):
                u = lin.vjp(u)
            return u

        return z, Linearization(jvp, vjp)


def _coupling_run_end(layers: list[Bijection], i: int) -> int:
    """The end (exclusive) of the run of couplings with alternating checkered masks
    (``half_stride`` 0, 1, 0, …) that starts at ``layers[i]``; ``i + 1`` for a lone layer."""
    stride = getattr(layers[i], "half_stride", None)
    j = i + 1
    while stride is not None and j < len(layers) and getattr(layers[j], "half_stride", None) == 1 - stride:
        stride, j = 1 - stride, j + 1
    return j


class ActNorm(Bijection):
    """Per-feature affine map ``x = z · exp(log_scale) + shift`` (Glow's actnorm, explicit init).

    Starts as the identity. :meth:`initialize_` sets it from a data batch so that the latent
    side is standardised; it is explicit (no hidden "initialised" flag), so forward passes never
    branch on device state.

    Arguments:
        shape: feature shape, e.g. ``(D,)`` for vectors or ``(C, 1, 1)`` for per-channel images.
    """

    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(*shape))
        self.shift = nn.Parameter(torch.zeros(*shape))

    @torch.no_grad()
    def initialize_(self, x: Tensor) -> None:
        """Set the map so ``inverse(x)`` has zero mean and unit variance per feature."""
        dims = [0] + [i + 1 for i, s in enumerate(self.log_scale.shape) if s == 1]
        mean = x.mean(dim=dims, keepdim=True).squeeze(0)
        std = x.std(dim=dims, keepdim=True).squeeze(0).clamp_min(1e-6)
        self.shift.copy_(mean.expand_as(self.shift))
        self.log_scale.copy_(std.log().expand_as(self.log_scale))

    def _ladj(self, x: Tensor) -> Tensor:
        return self.log_scale.expand_as(x[0]).sum().expand(x.shape[0])

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z * self.log_scale.exp() + self.shift, self._ladj(z)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return (x - self.shift) * torch.exp(-self.log_scale), -self._ladj(x)

    supports_tangents = True

    def forward_and_tangent(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        scale = self.log_scale.exp()
        return z * scale + self.shift, t * scale

    def linearize(self, z: Tensor, *, differentiable: bool = False) -> tuple[Tensor, Linearization]:
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            scale = self.log_scale.exp()
            return z * scale + self.shift, Linearization(lambda t: t * scale, lambda u: u * scale)


class Permutation(Bijection):
    """A fixed permutation of the last dimension (random with a seed, or a reversal)."""

    def __init__(self, features: int, *, seed: int | None = None) -> None:
        super().__init__()
        if seed is None:
            perm = torch.arange(features - 1, -1, -1)
        else:
            perm = torch.randperm(features, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[..., self.perm], z.new_zeros(z.shape[0])

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[..., self.inv_perm], x.new_zeros(x.shape[0])

    supports_tangents = True

    def forward_and_tangent(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return z[..., self.perm], t[..., self.perm]

    def linearize(self, z: Tensor, *, differentiable: bool = False) -> tuple[Tensor, Linearization]:
        perm, inv = self.perm, self.inv_perm
        out = (z if differentiable else z.detach())[..., perm]
        return out, Linearization(lambda t: t[..., perm], lambda u: u[..., inv])

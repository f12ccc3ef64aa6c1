"""Coupling layers for vectors, built on zuko's coupling transform, and a stack builder.

zuko provides the coupling scheme (:class:`zuko.flows.coupling.GeneralCouplingTransform`) and
the univariate maps (affine with a soft-bounded log-scale; monotonic rational-quadratic
splines); this module adapts them to rfdist's :class:`~rfdist.core.flows.base.Bijection` contract
(latent → data ``forward``, one pass each way) and zero-initialises the conditioner's last
layer so every stack starts at (or near) the identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

from rfdist.core.flows.base import ActNorm, Bijection, Chain, Linearization, Permutation

__all__ = ["AffineCoupling", "SplineCoupling", "vector_flow"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


class _ZukoCoupling(Bijection):
    def __init__(
        self,
        features: int,
        mask: Tensor,
        univariate,
        shapes,
        hidden: Sequence[int],
        activation: str,
    ) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling layer needs at least 2 features, got {features}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.lazy = GeneralCouplingTransform(
            features,
            mask=mask,
            univariate=univariate,
            shapes=shapes,
            hidden_features=list(hidden),
            activation=_ACTIVATIONS[activation],
        )
        last = self.lazy.hyper[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.lazy()(z)

    def inverse(self, x: Tensor) -> Tensor:
        return self.lazy().inv(x)

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.lazy().call_and_ladj(z)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        transform = self.lazy()
        z = transform.inv(x)
        return z, -transform.log_abs_det_jacobian(z, x)


# activation, and its derivative from (pre-activation, activation)
_PLAIN: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]] = {
    "relu": (torch.relu, lambda pre, out: (pre > 0).to(pre.dtype)),
    "tanh": (torch.tanh, lambda pre, out: 1 - out * out),
    "elu": (F.elu, lambda pre, out: torch.where(pre > 0, torch.ones_like(out), out + 1)),
    "silu": (F.silu, lambda pre, out: torch.sigmoid(pre) * (1 + pre * (1 - torch.sigmoid(pre)))),
}
_LOG_MIN_SLOPE = -math.log(1e-3)  # zuko's MonotonicAffineTransform: log-scale in (-6.9, 6.9)


class AffineCoupling(_ZukoCoupling):
    """RealNVP affine coupling: features where ``mask`` is True condition the others.

    The parameters live in zuko's coupling module (same names and initialisation), but the
    passes are plain torch — zuko's lazy transform objects cost more Python than the maths at
    small shapes — with hand-written tangents (:meth:`forward_and_tangent`) and a cached
    linearisation (:meth:`linearize`) for the volume term. The maths is zuko's:
    ``y_b = x_b · exp(a) + b``, ``a = s / (1 + |s| / 6.91)`` (slopes ≥ 1e-3).

    Arguments:
        features: vector length.
        mask: boolean ``(features,)``; True = passed through and fed to the conditioner.
        hidden: conditioner MLP widths, e.g. ``(128, 128, 128, 128)``.
        activation: ``relu`` | ``tanh`` | ``elu`` | ``silu``.

    Example:
        >>> layer = AffineCoupling(4, torch.tensor([True, False, True, False]), (16,))
        >>> layer(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self, features: int, mask: Tensor, hidden: Sequence[int] = (64, 64), activation: str = "relu"
    ) -> None:
        super().__init__(features, mask, MonotonicAffineTransform, ((), ()), hidden, activation)
        keep = torch.as_tensor(mask, dtype=torch.bool)
        idx_a, idx_b = keep.nonzero().squeeze(-1), (~keep).nonzero().squeeze(-1)
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("merge_index", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        self.act, self.act_grad = _PLAIN[activation]
        # checkered masks (the stacks' default): strided views instead of gathers
        first = int(idx_a[0]) if len(idx_a) else 0
        checkered = idx_a.tolist() == list(range(first, features, 2)) and first in (0, 1)
        self._stride_a = first if checkered else None

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self._stride_a is None:
            return x[..., self.idx_a], x[..., self.idx_b]
        return x[..., self._stride_a :: 2], x[..., 1 - self._stride_a :: 2]

    supports_tangents = True

    def _linears(self) -> list[nn.Module]:
        return [m for m in self.lazy.hyper if hasattr(m, "weight")]

    def _merge(self, a: Tensor, b: Tensor) -> Tensor:
        if self._stride_a is None:
            return torch.cat([a, b], -1)[..., self.merge_index]
        first, second = (a, b) if self._stride_a == 0 else (b, a)
        if first.shape[-1] == second.shape[-1]:
            return torch.stack([first, second], -1).flatten(-2)
        n = second.shape[-1]  # first holds one more
        pairs = torch.stack([first[..., :n], second], -1).flatten(-2)
        return torch.cat([pairs, first[..., n:]], -1)

    def _params(self, x_a: Tensor, grads: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Shift, log-scale and (when ``grads`` collects the activations' derivatives, for
        tangents) the log-scale's derivative in the raw output, from ``x_a``."""
        shift, raw = self.conditioner(x_a, grads)
        denom = 1 + raw.abs() / _LOG_MIN_SLOPE
        return shift, raw / denom, (denom.pow(-2) if grads is not None else denom)

    def conditioner(self, x_a: Tensor, grads: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The conditioner's raw output for ``x_a``: the shift and the unbounded log-scale."""
        *hidden, last = self._linears()
        h = x_a
        for lin in hidden:
            pre = F.linear(h, lin.weight, lin.bias)
            h = self.act(pre)
            if grads is not None:
                grads.append(self.act_grad(pre, h))
        shift, raw = F.linear(h, last.weight, last.bias).unflatten(-1, (-1, 2)).unbind(-1)
        return shift, raw

    def forward(self, z: Tensor) -> Tensor:
        return self._forward(z)[0]

    def inverse(self, x: Tensor) -> Tensor:
        return self._inverse(x)[0]

    def forward_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        y, log_scale = self._forward(z)
        return y, log_scale.sum(-1)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, log_scale = self._inverse(x)
        return z, -log_scale.sum(-1)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z_a, z_b = self._split(z)
        y_b, log_scale = self.forward_half(z_a, z_b)
        return self._merge(z_a, y_b), log_scale

    def _inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x_a, x_b = self._split(x)
        z_b, log_scale = self.inverse_half(x_a, x_b)
        return self._merge(x_a, z_b), log_scale

    @property
    def half_stride(self) -> int | None:
        """0 or 1 for a checkered mask (the conditioning half's first position), else None:
        :class:`~rfdist.core.flows.base.Chain` then passes halves between alternating couplings."""
        return self._stride_a

    def forward_half(self, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, Tensor]:
        """The transformed half ``y_b`` from the halves ``z_a`` (conditioning) and ``z_b``,
        and the log-scales (``ladj = log_scale.sum(-1)``)."""
        shift, log_scale, _ = self._params(z_a)
        return z_b * log_scale.exp() + shift, log_scale  # (as before: bitwise the same training)

    def inverse_half(self, x_a: Tensor, x_b: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`forward_half` undone: ``z_b`` from ``x_a`` and ``x_b``, and the log-scales."""
        shift, log_scale, _ = self._params(x_a)
        return (x_b - shift) * torch.exp(-log_scale), log_scale

    def forward_and_tangent(self, z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        (z_a, z_b), (t_a, t_b) = self._split(z), self._split(t)
        y_b, t_y = self.forward_half_and_tangent(z_a, z_b, t_a, t_b)
        return self._merge(z_a, y_b), self._merge(t_a, t_y)

    def forward_half_and_tangent(
        self, z_a: Tensor, z_b: Tensor, t_a: Tensor, t_b: Tensor
    ) -> tuple[Tensor, Tensor]:
        """:meth:`forward_half` and its tangent: ``(y_b, t_y)`` from the halves and their
        tangents (leading tangent dimensions broadcast), without a merge, for half-passing
        chains (:meth:`Chain.forward_and_tangent`)."""
        shift, dshift, log_scale, dlog, draw = self.conditioner_and_tangent(z_a, t_a)
        scale = log_scale.exp()
        y_b = z_b * scale
        t_y = t_b * scale + y_b * dlog * draw + dshift
        return y_b + shift, t_y

    def conditioner_and_tangent(
        self, x_a: Tensor, t_a: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Shift, its tangent, bounded log-scale, its derivative in the raw output, and the raw
        output's tangent, from ``x_a`` and its tangent ``t_a`` (hand-written forward mode)."""
        grads: list[Tensor] = []
        shift, log_scale, dlog = self._params(x_a, grads)
        *hidden, last = self._linears()
        g = t_a
        for lin, grad in zip(hidden, grads, strict=True):
            g = F.linear(g, lin.weight) * grad
        dshift, draw = F.linear(g, last.weight).unflatten(-1, (-1, 2)).unbind(-1)
        return shift, dshift, log_scale, dlog, draw

    def linearize(self, z: Tensor, *, differentiable: bool = False) -> tuple[Tensor, Linearization]:
        with torch.set_grad_enabled(differentiable and torch.is_grad_enabled()):
            z_a, z_b = self._split(z)
            grads: list[Tensor] = []
            shift, log_scale, dlog = self._params(z_a, grads)
            *hidden, last = self._linears()
            weights = [lin.weight for lin in hidden]
            w_last = last.weight
            scale = log_scale.exp()
            y_b = z_b * scale
            slope = y_b * dlog  # ∂y_b/∂raw
            out = self._merge(z_a, y_b + shift)
        split = self._split

        def jvp(t: Tensor) -> Tensor:
            t_a, t_b = split(t)
            g = t_a
            for w, grad in zip(weights, grads, strict=True):
                g = F.linear(g, w) * grad
            dphi = F.linear(g, w_last).unflatten(-1, (-1, 2))
            return self._merge(t_a, t_b * scale + slope * dphi[..., 1] + dphi[..., 0])

        def vjp(u: Tensor) -> Tensor:
            u_a, u_b = split(u)
            g = torch.stack([u_b, u_b * slope], -1).flatten(-2) @ w_last
            for w, grad in zip(reversed(weights), reversed(grads), strict=True):
                g = (g * grad) @ w
            return self._merge(u_a + g, u_b * scale)

        return out, Linearization(jvp, vjp)


class SplineCoupling(_ZukoCoupling):
    """Neural-spline coupling (monotonic rational-quadratic, identity outside ``[-bound, bound]``).

    Example:
        >>> layer = SplineCoupling(3, torch.tensor([True, False, False]), (16,), bins=4)
        >>> x = torch.randn(5, 3)
        >>> torch.allclose(layer.inverse(layer(x)), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        features: int,
        mask: Tensor,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        *,
        bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        univariate = partial(MonotonicRQSTransform, bound=bound)
        super().__init__(features, mask, univariate, ((bins,), (bins,), (bins - 1,)), hidden, activation)


def vector_flow(
    features: int,
    *,
    layers: int = 5,
    hidden: Sequence[int] = (64, 64),
    coupling: Literal["affine", "spline"] = "affine",
    activation: str = "relu",
    actnorm: bool = False,
    permute: bool = False,
    bins: int = 8,
    bound: float = 5.0,
    seed: int = 0,
) -> Chain:
    """A stack of coupling layers with alternating checkered masks.

    Arguments:
        features: vector length ``D`` (≥ 2).
        layers: number of couplings.
        hidden: conditioner widths.
        coupling: ``affine`` (RealNVP) or ``spline`` (neural spline).
        activation: conditioner nonlinearity.
        actnorm: insert an :class:`ActNorm` after each coupling.
        permute: insert a fixed random :class:`Permutation` between couplings.
        bins, bound: spline resolution and domain.
        seed: seeds the fixed permutations.

    Example:
        >>> flow = vector_flow(6, layers=4, hidden=(32, 32), coupling="spline")
        >>> flow(torch.randn(2, 6)).shape
        torch.Size([2, 6])
    """
    if layers < 1:
        raise ValueError(f"vector_flow: layers must be >= 1, got {layers}")
    blocks: list[Bijection] = []
    for i in range(layers):
        mask = torch.arange(features) % 2 == i % 2
        if coupling == "affine":
            blocks.append(AffineCoupling(features, mask, hidden, activation))
        elif coupling == "spline":
            blocks.append(SplineCoupling(features, mask, hidden, activation, bins=bins, bound=bound))
        else:
            raise ValueError(f"coupling must be 'affine' or 'spline', got {coupling!r}")
        if actnorm:
            blocks.append(ActNorm(features))
        if permute and i < layers - 1:
            blocks.append(Permutation(features, seed=seed + i))
    return Chain(blocks)

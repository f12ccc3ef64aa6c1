"""Coupling layers for vectors, built on zuko's coupling transform, and a stack builder.

zuko provides the coupling scheme (:class:`zuko.flows.coupling.GeneralCouplingTransform`) and
the univariate maps (affine with a soft-bounded log-scale; monotonic rational-quadratic
splines); this module adapts them to rfdist's :class:`~rfdist.flows.base.Bijection` contract
(latent → data ``forward``, one pass each way) and zero-initialises the conditioner's last
layer so every stack starts at (or near) the identity.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from zuko.flows.coupling import GeneralCouplingTransform
from zuko.transforms import MonotonicAffineTransform, MonotonicRQSTransform

from .base import ActNorm, Bijection, Chain, Permutation

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


class AffineCoupling(_ZukoCoupling):
    """RealNVP affine coupling: features where ``mask`` is True condition the others.

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

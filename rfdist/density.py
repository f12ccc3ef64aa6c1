"""The low-dimensional density p_U on R^d: a zuko normalizing flow behind a small interface."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor, nn
from zuko.flows.gaussianization import ElementWiseTransform

__all__ = ["LatentDensity"]


class LatentDensity(nn.Module):
    """A flow density on ``R^d`` with ``log_prob(u) -> (B,)`` and ``sample(n) -> (n, d)``.

    Wraps :class:`zuko.flows.NSF` (neural splines, default) or :class:`zuko.flows.MAF`
    (affine); for ``d = 1`` zuko builds element-wise transforms.

    Arguments:
        features: latent dimension ``d``.
        layers: number of transforms.
        hidden: conditioner widths.
        kind: ``nsf`` or ``maf``.

    Example:
        >>> density = LatentDensity(2, layers=2, hidden=(16,))
        >>> density.log_prob(density.sample(5)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        *,
        layers: int = 5,
        hidden: Sequence[int] = (32, 32),
        kind: Literal["nsf", "maf"] = "nsf",
    ) -> None:
        super().__init__()
        if kind == "nsf":
            self.flow = zuko.flows.NSF(features, transforms=layers, hidden_features=list(hidden))
        elif kind == "maf":
            self.flow = zuko.flows.MAF(features, transforms=layers, hidden_features=list(hidden))
        else:
            raise ValueError(f"latent density kind must be 'nsf' or 'maf', got {kind!r}")
        self.features = features
        # d = 1 (von Mises): zuko builds unconditional element-wise splines; evaluate them in
        # plain torch (same maths and parameters, a quarter less time than zuko's objects)
        self._plain = kind == "nsf" and all(
            isinstance(t, ElementWiseTransform) and hasattr(t, "phi") for t in self.flow.transform.transforms
        )

    def log_prob(self, u: Tensor) -> Tensor:
        """Log-density of each row of ``u`` (``(B, d)`` → ``(B,)``)."""
        if not self._plain:
            return self.flow().log_prob(u)
        total = u.new_zeros(u.shape[0])
        for transform in self.flow.transform.transforms:
            u, ladj = _rqs_call_and_ladj(u, *transform.phi)
            total = total + ladj.sum(-1)
        return self.flow.base().log_prob(u) + total

    def sample(self, n: int) -> Tensor:
        """``n`` differentiable samples (reparameterised), shape ``(n, d)``."""
        return self.flow().rsample((n,))


def _rqs_call_and_ladj(
    x: Tensor, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float = 5.0, slope: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """zuko's ``MonotonicRQSTransform(widths, heights, derivatives).call_and_ladj(x)``, element-wise
    parameters ``(features, bins)`` shared by all rows; identity outside ``[-bound, bound]``."""
    c = math.log(slope)
    widths = widths / (1 + (2 * widths / c).abs())
    heights = heights / (1 + (2 * heights / c).abs())
    derivatives = derivatives / (1 + (derivatives / c).abs())
    horizontal = bound * (2 * F.pad(widths.softmax(-1), (1, 0)).cumsum(-1) - 1)
    vertical = bound * (2 * F.pad(heights.softmax(-1), (1, 0)).cumsum(-1) - 1)
    knots = F.pad(derivatives, (1, 1)).exp()
    bins = horizontal.shape[-1] - 1
    k = (horizontal < x[..., None]).sum(-1) - 1
    inside = (k >= 0) & (k < bins)
    k = k.clamp(0, bins - 1)
    index = torch.stack([k, k + 1], -1)
    shape = (*x.shape, bins + 1)
    x0, x1 = horizontal.expand(shape).gather(-1, index).unbind(-1)
    y0, y1 = vertical.expand(shape).gather(-1, index).unbind(-1)
    d0, d1 = knots.expand(shape).gather(-1, index).unbind(-1)
    width = x1 - x0
    s = (y1 - y0) / width
    z = ((x - x0) / width).clamp(0, 1)  # rows outside the bound are replaced below
    zz = z * (1 - z)
    den = s + (d0 + d1 - 2 * s) * zz
    y = y0 + (y1 - y0) * (s * z * z + d0 * zz) / den
    jacobian = s * s * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z * z) / (den * den)
    return torch.where(inside, y, x), torch.where(inside, jacobian.log(), torch.zeros_like(x))

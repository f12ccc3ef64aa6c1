"""The low-dimensional density p_U on R^d: a normalizing flow behind a small interface.

``nsf`` and ``maf`` are zuko's flows; ``realnvp`` is the paper's prior (affine couplings with
alternating masks, rfdist's own plain-torch :class:`~rfdist.core.flows.AffineCoupling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor, nn
from zuko.distributions import DiagNormal
from zuko.flows.gaussianization import ElementWiseTransform

from rfdist.core.flows.coupling import vector_flow
from rfdist.core.latent_norm import LatentNorm, NormKind

__all__ = ["SPLINE_RANGE", "LatentDensity"]

#: the NSF splines' domain is ``[-SPLINE_RANGE, SPLINE_RANGE]`` per coordinate (zuko's bound);
#: outside it they are the identity, so the density there is the standard normal's tail
SPLINE_RANGE = 5.0


class LatentDensity(nn.Module):
    """A flow density on ``R^d`` with ``log_prob(u) -> (B,)`` and ``sample(n) -> (n, d)``.

    Wraps :class:`zuko.flows.NSF` (neural splines, default) or :class:`zuko.flows.MAF`
    (affine); for ``d = 1`` zuko builds element-wise transforms. ``realnvp``: the paper's
    prior, ``layers`` affine couplings with alternating checkered masks and one tanh
    conditioner MLP each for shift and log-scale (the paper's tabular runs: 5 × [32, 32]);
    ``u = h(ε)`` with ``h`` the coupling stack and ``ε ~ N(0, I_d)``; needs ``d ≥ 2``.
    ``norm``: a standardising affine layer in front of the flow (:class:`~rfdist.core.latent_norm.LatentNorm`:
    ``actnorm`` or ``running``), so latents of any scale land in the flow's range.

    Arguments:
        features: latent dimension ``d``.
        layers: number of transforms.
        hidden: conditioner widths.
        kind: ``nsf``, ``maf`` or ``realnvp``.
        norm: ``none``, ``actnorm`` or ``running``.

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
        kind: Literal["nsf", "maf", "realnvp"] = "nsf",
        norm: NormKind = "none",
    ) -> None:
        super().__init__()
        if norm not in ("none", "actnorm", "running"):
            raise ValueError(f"latent density norm must be 'none', 'actnorm' or 'running', got {norm!r}")
        self.norm = None if norm == "none" else LatentNorm(features, kind=norm)
        if kind == "nsf":
            self.flow = zuko.flows.NSF(features, transforms=layers, hidden_features=list(hidden))
        elif kind == "maf":
            self.flow = zuko.flows.MAF(features, transforms=layers, hidden_features=list(hidden))
        elif kind == "realnvp":
            if features < 2:
                raise ValueError(f"a realnvp latent density needs d >= 2 (couplings split u), got d={features}")
            self.flow = vector_flow(features, layers=layers, hidden=hidden, activation="tanh")
        else:
            raise ValueError(f"latent density kind must be 'nsf', 'maf' or 'realnvp', got {kind!r}")
        self.kind = kind
        self.features = features
        # d = 1 (von Mises): zuko builds unconditional element-wise splines; evaluate them in
        # plain torch (same maths and parameters, a quarter less time than zuko's objects)
        self._plain = (
            kind == "nsf"
            and getattr(self.flow.base, "f", None) is DiagNormal
            and all(
                isinstance(t, ElementWiseTransform) and hasattr(t, "phi")
                for t in self.flow.transform.transforms
            )
        )

    def log_prob(self, u: Tensor) -> Tensor:
        """Log-density of each row of ``u`` (``(B, d)`` → ``(B,)``)."""
        if self.norm is None:
            return self._flow_log_prob(u)
        z, ladj = self.norm(u)
        return self._flow_log_prob(z) + ladj

    def flow_input(self, u: Tensor) -> Tensor:
        """What the flow sees of latents ``u``: ``u`` standardised by the norm layer, if any."""
        return u if self.norm is None else self.norm(u)[0]

    def _flow_log_prob(self, u: Tensor) -> Tensor:
        if self.kind == "realnvp":
            eps, ladj = self.flow.inverse_and_ladj(u)
            return ladj - 0.5 * (eps * eps).sum(-1) - 0.5 * math.log(2 * math.pi) * self.features
        if not self._plain:
            return self.flow().log_prob(u)
        transforms = self.flow.transform.transforms
        phi = torch.cat([_ContiguousGrad.apply(p) for t in transforms for p in t.phi], -1)
        table, edges = _rqs_tables(phi, len(transforms))
        ladj = None
        for i in range(len(transforms)):
            u, step = _rqs_call_and_ladj(u, table[i], edges[i])
            ladj = step if ladj is None else ladj + step
        base = self.flow.base  # a DiagNormal (checked in __init__); its loc and scale are buffers
        z = (u - base.loc) / base.scale
        const = base.scale.log().sum() + 0.5 * math.log(2 * math.pi) * self.features
        return (ladj - 0.5 * z * z).sum(-1) - const

    def sample(self, n: int) -> Tensor:
        """``n`` differentiable samples (reparameterised), shape ``(n, d)``."""
        if self.kind == "realnvp":
            param = next(self.flow.parameters())
            u = self.flow(torch.randn(n, self.features, dtype=param.dtype, device=param.device))
        else:
            u = self.flow().rsample((n,))
        return u if self.norm is None else self.norm.inverse(u)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous.

    The backward of ``torch.cat`` hands each input a strided slice of the output's gradient;
    accumulated as is, a parameter's ``.grad`` is then non-contiguous, and DDP copies it into its
    bucket and warns ("Grad strides do not match bucket view strides") on every run.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # a fresh row-major copy: a (1, n) slice counts as contiguous but keeps the row stride
        return grad.clone(memory_format=torch.contiguous_format)


def _rqs_tables(
    phi: Tensor, transforms: int, bound: float = SPLINE_RANGE, slope: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """The knots of ``transforms`` element-wise zuko ``MonotonicRQSTransform``s, in one go.

    ``phi``: ``(F, T·(3K-1))``, each transform's unconstrained widths ``(F, K)``, heights
    ``(F, K)`` and derivatives ``(F, K-1)`` in turn. Returns each transform's knots as rows
    ``(x_k, y_k, δ_k)``, ``(T, F·(K+1), 3)``, and its detached abscissae ``(T, F, K+1)`` for the
    bin search. zuko's maths: soft-bounded parameters, softmax widths and heights, exp slopes.
    """
    features = phi.shape[0]
    phi = phi.view(features, transforms, -1).transpose(0, 1)  # (T, F, 3K-1)
    bins = (phi.shape[-1] + 1) // 3
    c = math.log(slope)
    wh = phi[..., : 2 * bins].unflatten(-1, (2, bins))  # widths and heights, (T, F, 2, K)
    wh = wh / (1 + (2 * wh / c).abs())
    knots = bound * (2 * F.pad(wh.softmax(-1), (1, 0)).cumsum(-1) - 1)  # (T, F, 2, K+1)
    slopes = phi[..., 2 * bins :]
    slopes = F.pad(slopes / (1 + (slopes / c).abs()), (1, 1)).exp()  # (T, F, K+1)
    table = torch.stack([knots[..., 0, :], knots[..., 1, :], slopes], -1)  # (T, F, K+1, 3)
    return table.flatten(1, 2), knots[..., 0, :].detach().contiguous()


def _rqs_call_and_ladj(x: Tensor, table: Tensor, edges: Tensor) -> tuple[Tensor, Tensor]:
    """zuko's ``MonotonicRQSTransform.call_and_ladj(x)`` for element-wise knots shared by all
    rows (one transform's ``table`` and ``edges`` from :func:`_rqs_tables`); the identity
    outside the knots. Returns ``y`` and the log-derivative, both ``(B, F)``."""
    batch, features = x.shape
    knots = edges.shape[-1]
    count = torch.searchsorted(edges, x.detach().t().contiguous()).t()  # knots below x (zuko's bin search)
    upper = count.clamp(1, knots - 1)
    inside = upper == count  # 0 <= k < K for zuko's bin k = count - 1
    if features > 1:
        upper = upper + torch.arange(features, device=x.device) * knots
    rows = table.index_select(0, torch.stack([upper - 1, upper], -1).flatten())
    x0, y0, d0, x1, y1, d1 = rows.view(batch, features, 6).unbind(-1)
    width, dy = x1 - x0, y1 - y0
    s = dy / width
    z = ((x - x0) / width).clamp(0, 1)  # rows outside the knots are replaced below
    omz = 1 - z
    zz, z2 = z * omz, z * z
    den = torch.addcmul(s, torch.add(d0 + d1, s, alpha=-2), zz)
    y = torch.addcdiv(y0, dy * torch.addcmul(s * z2, d0, zz), den)
    slope = torch.addcmul(torch.addcmul(d1 * z2, d0, omz * omz), s, zz, value=2)
    log_slope = ((s / den).square() * slope).log()
    return torch.where(inside, y, x), torch.where(inside, log_slope, 0.0)

"""The low-dimensional density p_U on R^d: a zuko normalizing flow behind a small interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import zuko
from torch import Tensor, nn

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

    def log_prob(self, u: Tensor) -> Tensor:
        """Log-density of each row of ``u`` (``(B, d)`` → ``(B,)``)."""
        return self.flow().log_prob(u)

    def sample(self, n: int) -> Tensor:
        """``n`` differentiable samples (reparameterised), shape ``(n, d)``."""
        return self.flow().rsample((n,))

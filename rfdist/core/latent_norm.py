"""A per-coordinate affine standardisation in front of the latent density.

The latent flow's splines act on a bounded range (zuko's NSF: ``[-5, 5]``; outside it is the
identity onto a standard normal). Nothing in two-step training fixes the scale of the latents
(reconstruction alone leaves it free: on Fashion-MNIST they grow from RMS ~6 to ~80 in 150
steps), so without a scale the density can only say ``-‖u‖²/2`` there. A standardising affine
layer ``z = (u - shift) / scale`` (log-Jacobian ``-Σ log scale``) keeps the flow's input where it
can shape it, for every training mode alike:

- ``actnorm``: ``shift`` and ``log scale`` are parameters, set from the first training batch's
  statistics (Glow's data-dependent initialisation), then learned with the density;
- ``running``: ``shift`` and ``scale`` follow the running mean and standard deviation of the
  training latents (exponential average, the first batch taken as is; not learned), the
  batch-norm bijection of RealNVP with running statistics, so the density follows latents
  whose scale drifts while the manifold trains.

Statistics are taken only in training mode with gradients on, from detached latents, and are
all-reduced over ``torch.distributed`` ranks, so every data-parallel replica holds the same
values. Evaluation (``eval()``) uses the stored values: a fixed bijection.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["RUNNING_MOMENTUM", "LatentNorm", "NormKind"]

NormKind = Literal["none", "actnorm", "running"]
#: weight of each training batch in the running statistics (a time constant of ~20 steps)
RUNNING_MOMENTUM = 0.05
_MIN_STD = 1e-6


class LatentNorm(nn.Module):
    """``z = (u - shift) · exp(-log_scale)`` per coordinate, with data-dependent statistics.

    Arguments:
        features: latent dimension ``d``.
        kind: ``actnorm`` (learned after a first-batch initialisation) or ``running``.
        momentum: ``running`` only: the weight of each training batch.

    Example:
        >>> norm = LatentNorm(2, kind="running")
        >>> z, ladj = norm(10 + 3 * torch.randn(500, 2))
        >>> bool(z.std(0).sub(1).abs().max() < 0.01), ladj.shape
        (True, torch.Size([500]))
    """

    def __init__(
        self, features: int, *, kind: Literal["actnorm", "running"], momentum: float = RUNNING_MOMENTUM
    ):
        super().__init__()
        if kind not in ("actnorm", "running"):
            raise ValueError(f"latent norm kind must be 'actnorm' or 'running', got {kind!r}")
        self.kind = kind
        self.momentum = momentum
        zeros = torch.zeros(features)
        if kind == "actnorm":
            self.shift = nn.Parameter(zeros.clone())
            self.log_scale = nn.Parameter(zeros.clone())
        else:
            self.register_buffer("shift", zeros.clone())
            self.register_buffer("log_scale", zeros.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self._ready = False  # the host's copy of `initialized`: no device read per step

    def forward(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|dz/du|)``: the standardised rows ``(B, d)`` and ``(B,)`` log-Jacobians."""
        if self.training and torch.is_grad_enabled() and (self.kind == "running" or not self._ready):
            self._observe(u.detach())
        z = (u - self.shift) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(u.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """``u`` for standardised rows ``z`` (differentiable, for sampling)."""
        return z * self.log_scale.exp() + self.shift

    @torch.no_grad()
    def _observe(self, u: Tensor) -> None:
        mean, std = _moments(u)
        log_std = std.clamp_min(_MIN_STD).log()
        if self._ready:  # running: an exponential average
            self.shift.lerp_(mean, self.momentum)
            self.log_scale.copy_(
                ((1 - self.momentum) * (2 * self.log_scale).exp() + self.momentum * std**2).log() / 2
            )
        else:
            self.shift.copy_(mean)
            self.log_scale.copy_(log_std)
            self.initialized.fill_(True)
            self._ready = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        flag = state_dict.get(prefix + "initialized")
        if flag is not None:
            self._ready = bool(flag)  # one read, when a checkpoint is loaded


def _moments(u: Tensor) -> tuple[Tensor, Tensor]:
    """Per-coordinate mean and (population) standard deviation of ``u``'s rows over all ranks."""
    sums = torch.cat([u.new_full((1,), u.shape[0]), u.sum(0), (u * u).sum(0)])
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(sums)
    d = u.shape[1]
    count, total, squares = sums[0], sums[1 : 1 + d], sums[1 + d :]
    mean = total / count
    var = (squares / count - mean * mean).clamp_min(0)
    return mean, var.sqrt()

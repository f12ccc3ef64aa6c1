"""On-the-fly preprocessing: image dequantisation + logit (with its Jacobian), standardisation.

Images are stored as pixel values in ``[0, 256)``. As in RealNVP and the paper, a pixel ``v``
becomes ``y = (v + U)/256`` (uniform dequantisation), then ``p = λ + (1 − 2λ) y`` and
``z = logit(p)``. ``log|det ∂z/∂v|`` per row is returned so data-space likelihoods
(per pixel value) and logit-space ones differ by exactly that term.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "as_float",
    "batch_preprocessor",
    "dequantize_logit",
    "logit_inverse",
    "logit_logdet",
    "standardize",
]


def logit_logdet(p: Tensor, lam: float) -> Tensor:
    """``log|det ∂z/∂v|`` per row for ``z = logit(λ + (1−2λ)(v/256))`` at ``p`` (before logit)."""
    per_dim = math.log((1 - 2 * lam) / 256.0) - torch.log(p) - torch.log1p(-p)
    return per_dim.flatten(1).sum(-1)


def dequantize_logit(
    pixels: Tensor, *, lam: float = 1e-6, generator: torch.Generator | None = None, dequantize: bool = True
) -> tuple[Tensor, Tensor]:
    """Pixels in ``[0, 256)`` → logit space; returns ``(z, logdet)`` with ``logdet`` per row.

    Example:
        >>> z, logdet = dequantize_logit(torch.full((2, 1, 2, 2), 128.0), dequantize=False)
        >>> bool(z.abs().max() < 1e-3), logdet.shape
        (True, torch.Size([2]))
    """
    noise = (
        torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype, device=pixels.device)
        if dequantize
        else torch.zeros_like(pixels)
    )
    y = (pixels + noise) / 256.0
    p = lam + (1 - 2 * lam) * y
    return torch.log(p) - torch.log1p(-p), logit_logdet(p, lam)


def logit_inverse(z: Tensor, *, lam: float = 1e-6) -> Tensor:
    """Logit space → pixel scale ``[0, 256)`` (for plotting samples)."""
    return ((torch.sigmoid(z) - lam) / (1 - 2 * lam) * 256.0).clamp(0, 255.999)


def standardize(x: Tensor, stats: dict) -> Tensor:
    """``(x − mean) / std`` with per-feature statistics ``{"mean": [...], "std": [...]}``."""
    mean = torch.as_tensor(stats["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(stats["std"], dtype=x.dtype, device=x.device)
    return (x - mean) / std


def as_float(x: Tensor) -> Tensor:
    """Rows as stored (uint8 pixels, float64 tensors) → float32 on the tensor's own device."""
    return x if x.dtype == torch.float32 else x.to(torch.float32)


def batch_preprocessor(kind: str, shape: tuple[int, ...], *, lam: float = 1e-6, stats: dict | None = None):
    """A function mapping a batch of rows ``(n, D)`` or ``(n, *shape)`` to model input ``(n, *shape)``.

    Rows may arrive as stored (uint8 pixels): they become float32 here, on the batch's device.
    ``kind``: ``none``, ``logit`` (dequantise + logit, images) or ``standardize`` (needs ``stats``).
    """
    if kind == "logit":
        return lambda x: dequantize_logit(as_float(x).reshape(x.shape[0], *shape), lam=lam)[0]
    if kind == "standardize":
        if not stats:
            raise ValueError("data.preprocess=standardize needs feature statistics beside the dataset")
        return lambda x: standardize(as_float(x).reshape(x.shape[0], -1), stats).reshape(x.shape[0], *shape)
    if kind != "none":
        raise ValueError(f"unknown preprocessing {kind!r}")
    return lambda x: as_float(x).reshape(x.shape[0], *shape)

"""Independent reference computations for the tests (brute force, no rfdist code paths)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp_decoder(d: int, D: int, *, hidden: int = 16, dtype=torch.float64, seed: int = 0) -> nn.Module:
    """A random smooth MLP R^d -> R^D (tanh), the test's stand-in for an injective map."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, D)
    )
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.8)
    return net.to(dtype)


def brute_jacobians(fn, z: Tensor, *, create_graph: bool = False) -> Tensor:
    """Per-row Jacobians (B, D, d) by torch.autograd.functional.jacobian, one row at a time."""
    rows = []
    for b in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda zb: fn(zb.unsqueeze(0)).flatten(1)[0], z[b], create_graph=create_graph
        )
        rows.append(jac)
    return torch.stack(rows)


def brute_logdet(fn, z: Tensor, *, create_graph: bool = False) -> Tensor:
    """log det(JᵀJ) per row via slogdet of the brute-force Jacobian."""
    jac = brute_jacobians(fn, z, create_graph=create_graph)
    return torch.linalg.slogdet(jac.transpose(-1, -2) @ jac).logabsdet


def param_grads(module: nn.Module, scalar: Tensor) -> list[Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(scalar, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


def flat(tensors: list[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def rel_err(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))

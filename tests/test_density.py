"""The plain-torch evaluation of the d = 1 latent density against zuko's own."""

from __future__ import annotations

import torch

from rfdist.core.density import LatentDensity


def test_plain_elementwise_spline_density_is_zukos() -> None:
    torch.manual_seed(0)
    density = LatentDensity(1, layers=3, hidden=(8,)).double()
    assert density._plain
    with torch.no_grad():
        for p in density.parameters():
            p.mul_(2.0)
    u = torch.cat([torch.linspace(-7, 7, 57), torch.tensor([-5.0, 5.0, 0.0])]).double().unsqueeze(1)
    ours = density.log_prob(u)
    theirs = density.flow().log_prob(u)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    params = list(density.parameters())
    for a, b in zip(
        torch.autograd.grad(ours.sum(), params), torch.autograd.grad(theirs.sum(), params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert not LatentDensity(2, layers=2, hidden=(8,))._plain  # d > 1: zuko's autoregressive path


def test_plain_density_gradients_are_laid_out_like_their_parameters() -> None:
    """Each parameter's gradient is contiguous like the parameter: DDP's gradient buckets then
    take it as is (a strided slice of the concatenated table made DDP warn "Grad strides do not
    match bucket view strides" on every run, and copy)."""
    density = LatentDensity(1, layers=3, hidden=(8,))
    assert density._plain
    density.log_prob(torch.randn(16, 1)).sum().backward()
    for name, p in density.named_parameters():
        assert p.grad is not None and p.grad.stride() == p.stride(), (name, p.grad.stride(), p.stride())

"""The plain-torch evaluation of the d = 1 latent density against zuko's own."""

from __future__ import annotations

import pytest
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


def _realnvp(features: int = 2, seed: int = 0, scale: float = 0.3) -> LatentDensity:
    """The paper's prior (5 affine couplings, [32, 32]) with its zero-initialised last layers
    perturbed, so the density is far from the standard normal it starts as."""
    torch.manual_seed(seed)
    density = LatentDensity(features, layers=5, hidden=(32, 32), kind="realnvp").double()
    with torch.no_grad():
        for p in density.parameters():
            p.add_(scale * torch.randn_like(p))
    return density


def test_realnvp_log_prob_is_the_change_of_variables_by_brute_force() -> None:
    """log p(u) = log N(h⁻¹(u); 0, I) + log |det ∂h⁻¹/∂u|, the Jacobian by autograd row by row."""
    density = _realnvp(3)
    u = 1.5 * torch.randn(6, 3, dtype=torch.float64)
    expected = []
    for row in u:
        eps = density.flow.inverse(row.unsqueeze(0))[0]
        jac = torch.autograd.functional.jacobian(lambda r: density.flow.inverse(r.unsqueeze(0))[0], row)
        normal = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum()
        expected.append(normal + torch.linalg.slogdet(jac).logabsdet)
    torch.testing.assert_close(density.log_prob(u), torch.stack(expected), rtol=1e-10, atol=1e-10)


def test_realnvp_density_integrates_to_one() -> None:
    density = _realnvp(2, scale=0.1)  # a non-Gaussian density with its mass inside the grid
    assert density.sample(4000).abs().max() < 8
    grid = torch.linspace(-10.0, 10.0, 801, dtype=torch.float64)
    cell = float(grid[1] - grid[0]) ** 2
    points = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        mass = float(density.log_prob(points).exp().sum()) * cell
    assert abs(mass - 1.0) < 5e-3, mass


def test_realnvp_samples_are_the_pushed_normal_draws_and_differentiable() -> None:
    """sample(n) is h(ε) for the same ε ~ N(0, I) (inverse recovers it), log_prob of a sample is
    log N(ε) − log |det ∂h/∂ε|, and samples carry gradients to the parameters."""
    density = _realnvp(4)
    torch.manual_seed(3)
    u = density.sample(5)
    torch.manual_seed(3)
    eps = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(density.flow.inverse(u), eps, rtol=1e-9, atol=1e-9)
    ladj = torch.stack(
        [torch.linalg.slogdet(torch.autograd.functional.jacobian(density.flow, e.unsqueeze(0))[0, :, 0]).logabsdet for e in eps]
    )
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum(-1)
    torch.testing.assert_close(density.log_prob(u), normal - ladj, rtol=1e-9, atol=1e-9)
    u.sum().backward()
    assert all(p.grad is not None for p in density.parameters())


def test_realnvp_needs_two_latent_dimensions() -> None:
    with pytest.raises(ValueError, match="realnvp latent density needs d >= 2"):
        LatentDensity(1, kind="realnvp")


def test_realnvp_through_the_config_and_a_checkpoint(tmp_path) -> None:
    """``model.density: realnvp`` builds the paper's prior; a checkpoint's spec and weights
    rebuild the same model (same log-density)."""
    from rfdist import ModelSpec, build_model
    from rfdist.config import ModelConfig
    from rfdist.runtime.checkpoint import TrainingState, load_state, save_state

    cfg = ModelConfig(latent_dim=3, density="realnvp", density_layers=5, density_hidden=[32, 32])
    spec = cfg.spec((6,), seed=0)
    model = build_model(spec)
    assert model.density.kind == "realnvp" and len(model.density.flow.layers) == 5
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = TrainingState(
        model=model.state_dict(), optimizer=None, scheduler=None, step=1, rng=None,
        config={"model": cfg.model_dump()}, spec=spec.to_dict(), metrics={},
    )
    save_state(tmp_path, state)
    loaded = load_state(tmp_path)
    again = build_model(ModelSpec.from_dict(loaded.spec))
    again.load_state_dict(loaded.model)
    x = torch.randn(4, 6)
    torch.testing.assert_close(again.log_prob(x), model.log_prob(x))
    assert ModelConfig(**loaded.config["model"]).density == "realnvp"

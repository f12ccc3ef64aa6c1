"""RectangularFlow: left inverse, on-manifold density, loss parts, dtypes and devices."""

from __future__ import annotations

import pytest
import torch

from rfdist import ModelSpec, RectangularFlow, build_model
from rfdist.core.engine import LossOptions, train_step

from .conftest import available_devices
from .helpers import brute_jacobians, brute_logdet

SPECS = {
    "affine": ModelSpec(data_shape=(4,), latent_dim=2, coupling="affine", flow_layers=3, flow_hidden=(16,)),
    "spline": ModelSpec(data_shape=(3,), latent_dim=1, coupling="spline", flow_layers=3, flow_hidden=(16,)),
    "image": ModelSpec(
        data_shape=(1, 4, 4),
        latent_dim=3,
        flow="multiscale",
        scales=1,
        couplings=1,
        conv_hidden=4,
        conv_blocks=1,
    ),
}


def _model(name: str, dtype=torch.float64) -> RectangularFlow:
    model = build_model(SPECS[name]).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("name", list(SPECS))
def test_decode_then_encode_returns_the_latent(name: str) -> None:
    model = _model(name)
    u = torch.randn(8, model.latent_dim, dtype=torch.float64)
    torch.testing.assert_close(model.encode(model.decode(u)), u, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(SPECS))
def test_points_on_the_manifold_are_fixed_by_projection(name: str) -> None:
    model = _model(name)
    on_manifold = model.decode(torch.randn(8, model.latent_dim, dtype=torch.float64))
    torch.testing.assert_close(model.project(on_manifold), on_manifold, rtol=1e-9, atol=1e-9)
    off = on_manifold + 0.5 * torch.randn_like(on_manifold)
    assert (
        float((model.project(off) - off).abs().max().detach()) > 1e-3
    )  # projection really moves off-manifold points


@pytest.mark.parametrize("name", list(SPECS))
def test_log_prob_is_latent_density_minus_half_brute_force_volume(name: str) -> None:
    model = _model(name)
    x = torch.randn(5, *model.data_shape, dtype=torch.float64)
    u = model.encode(x)
    expected = model.density.log_prob(u) - 0.5 * brute_logdet(model.decode_flat, u)
    torch.testing.assert_close(model.log_prob(x), expected, rtol=1e-8, atol=1e-8)


def test_exact_ml_loss_is_the_documented_formula() -> None:
    model = _model("affine")
    x = torch.randn(6, 4, dtype=torch.float64)
    loss, parts = model.loss(x, beta=3.0, likelihood_weight=0.5)
    u = model.encode(x)
    nll = -(model.density.log_prob(u) - 0.5 * brute_logdet(model.decode_flat, u))
    recon = (x - model.decode(u)).pow(2).sum(-1)
    torch.testing.assert_close(loss, (0.5 * nll + 3.0 * recon).mean())
    torch.testing.assert_close(parts["nll"], nll.mean())
    assert set(parts) >= {"loss", "log_pu", "logdet", "nll", "reconstruction"}


def test_hutchinson_loss_reports_surrogate_and_cg_stats_not_an_nll() -> None:
    model = _model("affine")
    x = torch.randn(6, 4, dtype=torch.float64)
    _, parts = model.loss(x, estimator="hutchinson", num_samples=3, cg_tol=1e-6)
    assert "nll" not in parts and "logdet" not in parts
    assert {"logdet_surrogate", "cg_iterations", "cg_residual", "matvecs"} <= set(parts)


def test_two_step_keeps_the_density_out_of_the_flow() -> None:
    model = _model("affine")
    x = torch.randn(6, 4, dtype=torch.float64)
    loss, parts = model.loss(x, mode="two_step", beta=0.0)  # only the density term remains
    loss.backward()
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in model.flow.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.density.parameters())
    assert "logdet" not in parts and "logdet_surrogate" not in parts


def test_round_trip_shares_the_innermost_coupling_with_the_same_values_and_gradients() -> None:
    """At D = 2, d = 1 (von Mises) the two-step round trip evaluates the innermost coupling's
    conditioner once; it must equal encode-then-decode, values and gradients (x and parameters)."""
    shared = build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=4, flow_hidden=(8,)))
    assert shared.share_innermost
    assert not build_model(SPECS["affine"]).share_innermost  # D = 4, d = 2: the latent is not a half
    assert not build_model(ModelSpec(data_shape=(2,), latent_dim=1, actnorm=True)).share_innermost
    model = shared.double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(9, 2, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(9, 2, dtype=torch.float64)
    inputs = [x, *model.flow.parameters()]

    def value_and_grads(u, recon):
        value = (weights * recon).sum() + (u * u).sum()
        return value, torch.autograd.grad(value, inputs, allow_unused=True)

    u, recon = model.round_trip(x)
    u_ref = model.encode(x)
    recon_ref = model.decode_flat(u_ref)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(recon, recon_ref, rtol=1e-12, atol=1e-12)
    (_, grads), (_, grads_ref) = value_and_grads(u, recon), value_and_grads(u_ref, recon_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False])
def test_exact_loss_at_d1_is_one_tangent_column_with_brute_force_values_and_gradients(
    shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At d = 1 the exact loss takes ``round_trip_tangent`` (log ‖J‖², no Gram matrix): its
    column, loss and every parameter's gradient equal a brute-force Jacobian's, with the
    innermost coupling shared (D = 2) and without (an actnorm breaks the run of couplings)."""
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=4, flow_hidden=(8, 8), actnorm=not shared)
    model = build_model(spec).double()
    assert model.share_innermost is shared
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(7, 2, dtype=torch.float64)
    u, recon, column = model.round_trip_tangent(x)
    jac = brute_jacobians(model.decode_flat, model.encode(x))  # (B, D, 1)
    torch.testing.assert_close(u, model.encode(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(recon, model.decode_flat(u), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(column, jac[..., 0], rtol=1e-10, atol=1e-12)

    def general(*args, **kwargs):
        raise AssertionError("the d = 1 exact loss went through the general volume term")

    monkeypatch.setattr(RectangularFlow, "_volume_term", general)
    loss, parts = model.loss(x, beta=3.0, estimator="exact")
    u_ref = model.encode(x)
    nll = -(model.density.log_prob(u_ref) - 0.5 * brute_logdet(model.decode_flat, u_ref, create_graph=True))
    expected = (nll + 3.0 * (x - model.decode(u_ref)).pow(2).sum(-1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(parts["nll"], nll.mean().detach(), rtol=1e-10, atol=1e-12)
    params = list(model.parameters())
    for g, g_ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(expected, params), strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.slow
def test_compiled_loss_is_the_eager_loss_and_keeps_the_state_dict() -> None:
    """``compile_loss`` routes forward through torch.compile: same loss parts and gradients as
    eager for the exact d = 1 loss (one compile: ~30 s); the state-dict keys are unchanged."""
    model = build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=2, flow_hidden=(8,))).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    x = torch.randn(16, 2, dtype=torch.float64)
    keys = list(model.state_dict())
    params = list(model.parameters())
    for options in ({"estimator": "exact"},):
        model.compile_loss(False)
        eager, eager_parts = model(x, **options)
        eager_grads = torch.autograd.grad(eager, params, allow_unused=True)
        model.compile_loss(dynamic=False)
        compiled, parts = model(x, **options)
        grads = torch.autograd.grad(compiled, params, allow_unused=True)
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-10)
        assert set(parts) == set(eager_parts)
        for g, g_ref in zip(grads, eager_grads, strict=True):
            assert (g is None) == (g_ref is None)
            if g is not None:
                torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)
    assert list(model.state_dict()) == keys


def test_ml_gradient_reaches_the_flow_through_the_volume_term() -> None:
    model = _model("affine")
    x = torch.randn(6, 4, dtype=torch.float64)
    loss, _ = model.loss(x, beta=0.0)
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.flow.parameters())


@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_train_step_runs_in_each_dtype_and_device(device: str, dtype: torch.dtype, estimator: str) -> None:
    model = build_model(SPECS["affine"]).to(device=device, dtype=dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(16, 4, dtype=dtype, device=device)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_step(model, optimizer, x, LossOptions(estimator=estimator, beta=1.0))
    assert not result.skipped
    assert all(isinstance(v, float) for v in result.metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    samples = model.sample(4)
    assert samples.dtype == dtype and samples.device.type == device and samples.shape == (4, 4)
    assert model.log_prob(x).dtype == dtype


def test_train_step_skips_non_finite_gradients() -> None:
    model = build_model(SPECS["affine"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(8, 4)
    x[0, 0] = float("nan")
    result = train_step(model, optimizer, x, LossOptions())
    assert result.skipped and result.metrics["skipped"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_invalid_latent_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="latent_dim"):
        build_model(ModelSpec(data_shape=(3,), latent_dim=3))
    with pytest.raises(ValueError, match="mode"):
        build_model(SPECS["affine"]).loss(torch.randn(2, 4), mode="adversarial")  # type: ignore[arg-type]

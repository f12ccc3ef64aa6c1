"""rfdist.core.volume against independent computations: brute-force Jacobians and dense solves."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rfdist import ModelSpec, build_model
from rfdist.core.volume import VolumeStats, conjugate_gradient, logdet_exact, logdet_surrogate, sample_probes

from .conftest import available_devices
from .helpers import brute_logdet, flat, mlp_decoder, param_grads, rel_err

SHAPES = [(1, 2), (2, 3), (5, 40)]


@pytest.mark.parametrize(("d", "D"), SHAPES)
def test_logdet_exact_matches_brute_force_value_and_gradients(d: int, D: int) -> None:
    fn = mlp_decoder(d, D)
    z = torch.randn(6, d, dtype=torch.float64, requires_grad=True)

    ours = logdet_exact(fn, z)
    reference = brute_logdet(fn, z, create_graph=True)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)

    g_ours = flat(param_grads(fn, ours.sum()))
    g_ref = flat(param_grads(fn, reference.sum()))
    assert rel_err(g_ours, g_ref) < 1e-5

    (gz_ours,) = torch.autograd.grad(logdet_exact(fn, z).sum(), z)
    (gz_ref,) = torch.autograd.grad(brute_logdet(fn, z, create_graph=True).sum(), z)
    assert rel_err(gz_ours, gz_ref) < 1e-5


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec(data_shape=(3,), latent_dim=2, coupling="affine", flow_layers=3, flow_hidden=(16,)),
        ModelSpec(data_shape=(5,), latent_dim=2, coupling="spline", flow_layers=3, flow_hidden=(16,)),
        ModelSpec(
            data_shape=(1, 4, 4),
            latent_dim=3,
            flow="multiscale",
            scales=1,
            couplings=1,
            conv_hidden=4,
            conv_blocks=1,
        ),
    ],
    ids=["affine", "spline", "multiscale"],
)
def test_logdet_exact_matches_brute_force_on_the_models_own_g(spec: ModelSpec) -> None:
    model = build_model(spec).double()
    # Perturb the (identity-initialised) model so the Jacobian is non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    u = torch.randn(4, spec.latent_dim, dtype=torch.float64, requires_grad=True)

    ours = logdet_exact(model.decode_flat, u, chunk_size=2)
    reference = brute_logdet(model.decode_flat, u, create_graph=True)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-8)
    assert (
        rel_err(flat(param_grads(model.flow, ours.sum())), flat(param_grads(model.flow, reference.sum())))
        < 1e-5
    )


def test_logdet_exact_chunking_gives_the_same_result() -> None:
    fn = mlp_decoder(5, 40)
    z = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(logdet_exact(fn, z, chunk_size=2), logdet_exact(fn, z))


def test_logdet_exact_retries_with_jitter_and_reports_it() -> None:
    def degenerate(z: torch.Tensor) -> torch.Tensor:  # exactly rank-1 Jacobian for d = 2
        return torch.cat([z[:, :1].sin(), 0 * z[:, 1:], z[:, :1]], dim=1)

    z = torch.randn(4, 2, dtype=torch.float64)
    stats = VolumeStats()
    value = logdet_exact(degenerate, z, stats=stats)
    assert torch.isfinite(value).all()
    assert bool((stats.jitter > 0).all())
    healthy = VolumeStats()
    logdet_exact(mlp_decoder(2, 3), z, stats=healthy)
    assert bool((healthy.jitter == 0).all())


def _all_rademacher(batch: int, d: int) -> torch.Tensor:
    """Every sign vector in {±1}^d for every row, ``(2^d, batch, d)``: Σ εεᵀ / 2^d = I exactly."""
    signs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)
    return signs.unsqueeze(1).expand(-1, batch, -1).contiguous()


def _surrogate_grads(fn, z: torch.Tensor, **kwargs) -> torch.Tensor:
    """Gradient of the summed surrogate w.r.t. the decoder's parameters and the points."""
    surrogate = logdet_surrogate(fn, z, **kwargs).sum()
    params = [p for p in fn.parameters()]
    return _grads(surrogate, [*params, z])


def _grads(scalar: torch.Tensor, wrt: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(scalar, wrt, allow_unused=True)
    return flat([torch.zeros_like(w) if g is None else g for w, g in zip(wrt, grads, strict=True)])


def _exact_grads(fn, z: torch.Tensor) -> torch.Tensor:
    params = [p for p in fn.parameters()]
    return _grads(logdet_exact(fn, z).sum(), [*params, z])


@pytest.mark.parametrize("matvec", ["jvp", "vjp"])
def test_surrogate_gradient_is_exact_over_all_rademacher_probes(matvec: str) -> None:
    """Averaged over all 2^d sign vectors the estimator's expectation is computed exactly:
    it must equal the brute-force gradient of log det(JᵀJ) to the CG tolerance."""
    d, D = 4, 9
    fn = mlp_decoder(d, D, seed=3)
    z = torch.randn(3, d, dtype=torch.float64, requires_grad=True)
    exact = _exact_grads(fn, z)
    est = _surrogate_grads(fn, z, probes=_all_rademacher(3, d), cg_tol=1e-14, cg_max_iters=50, matvec=matvec)
    assert rel_err(est, exact) < 1e-8
    # negative control: a solve stopped one CG step before d (where CG is exact) is biased
    biased = _surrogate_grads(
        fn, z, probes=_all_rademacher(3, d), cg_tol=0.0, cg_max_iters=d - 1, matvec=matvec
    )
    assert rel_err(biased, exact) > 1e-4


def _seed_estimates(fn, z, direction, seeds: int, **kwargs) -> torch.Tensor:
    out = []
    for seed in range(seeds):
        gen = torch.Generator().manual_seed(seed)
        out.append(_surrogate_grads(fn, z, generator=gen, **kwargs) @ direction)
    return torch.stack(out)


@pytest.mark.parametrize("probe", ["gaussian", "rademacher"])
def test_surrogate_gradient_is_unbiased_within_its_standard_error(probe: str) -> None:
    """Drawn probes: the mean over 200 seeds lies within 4.5 measured standard errors of the
    brute-force gradient (along a fixed random direction); a truncated solve does not."""
    d, D, seeds = 4, 9, 200
    fn = mlp_decoder(d, D, seed=3)
    z = torch.randn(3, d, dtype=torch.float64, requires_grad=True)
    exact = _exact_grads(fn, z)
    direction = torch.randn(exact.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    target = float(exact @ direction)

    def z_score(**kwargs) -> float:
        t = _seed_estimates(fn, z, direction, seeds, num_samples=4, probe=probe, **kwargs)
        return abs(float(t.mean()) - target) / (float(t.std()) / seeds**0.5)

    assert z_score(cg_tol=1e-12, cg_max_iters=50) < 4.5
    assert z_score(cg_tol=0.0, cg_max_iters=1) > 4.5  # negative control: visibly biased


def test_surrogate_reports_cg_statistics() -> None:
    fn = mlp_decoder(5, 12)
    z = torch.randn(7, 5, dtype=torch.float64)
    stats = VolumeStats()
    logdet_surrogate(fn, z, num_samples=2, cg_tol=1e-8, cg_max_iters=30, stats=stats)
    scalars = stats.as_scalars()
    assert 1 <= scalars["cg_iterations"] <= 30
    assert scalars["cg_residual"] <= 1e-8
    assert scalars["matvecs"] >= scalars["cg_max_iterations"]


def _random_spd(batch: int, n: int, condition: float, dtype=torch.float64) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(batch, n, n, dtype=dtype))
    eigs = torch.logspace(0, math.log10(condition), n, dtype=dtype).expand(batch, n)
    return q @ torch.diag_embed(eigs) @ q.transpose(-1, -2)


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_conjugate_gradient_matches_dense_solve(tol: float) -> None:
    a = _random_spd(16, 30, 1e3)
    b = torch.randn(16, 30, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, tol=tol, max_iters=500)
    reference = torch.linalg.solve(a, b)
    true_residual = (b - (a @ x.unsqueeze(-1)).squeeze(-1)).norm(dim=-1) / b.norm(dim=-1)
    assert bool(info.converged.all())
    assert float(true_residual.max()) <= tol * 1.01
    # forward error is bounded by condition number × relative residual
    assert float(((x - reference).norm(dim=-1) / reference.norm(dim=-1)).max()) <= 1e3 * tol * 1.01
    assert int(info.iterations.max()) <= 500


def test_conjugate_gradient_masks_converged_systems() -> None:
    """An easy system and a hard one in one batch: the easy one stops early and stays solved."""
    easy = torch.eye(20, dtype=torch.float64) * 2.0
    hard = _random_spd(1, 20, 1e3)[0]
    a = torch.stack([easy, hard])
    b = torch.randn(2, 20, dtype=torch.float64)
    x, info = conjugate_gradient(lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, tol=1e-10, max_iters=200)
    assert int(info.iterations[0]) == 1
    assert int(info.iterations[1]) > 5
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-6, atol=1e-8)


class _SyncCounter:
    """Counts Tensor→host conversions (the calls that synchronise a device)."""

    names = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in self.names:
            original = getattr(torch.Tensor, name)

            def counted(*args, _original=original, **kwargs):
                self.count += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize(("check_every", "allowed"), [(0, 0), (10, 4)])
def test_conjugate_gradient_does_not_sync_every_iteration(
    monkeypatch: pytest.MonkeyPatch, check_every: int, allowed: int
) -> None:
    a = _random_spd(8, 50, 1e4)
    b = torch.randn(8, 50, dtype=torch.float64)
    counter = _SyncCounter(monkeypatch)
    _, info = conjugate_gradient(
        lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, tol=0.0, max_iters=40, check_every=check_every
    )
    assert info.matvecs == 40
    assert counter.count <= allowed


def test_surrogate_does_not_sync_inside_the_solve(monkeypatch: pytest.MonkeyPatch) -> None:
    fn = mlp_decoder(20, 60)
    z = torch.randn(4, 20, dtype=torch.float64)
    counter = _SyncCounter(monkeypatch)
    logdet_surrogate(fn, z, cg_tol=0.0, cg_max_iters=20, check_every=0)
    assert counter.count == 0


@pytest.mark.gpu
@pytest.mark.parametrize("device", available_devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_estimators_follow_input_dtype_and_device(device: str, dtype: torch.dtype) -> None:
    fn = mlp_decoder(3, 7, dtype=dtype).to(device)
    z = torch.randn(5, 3, dtype=dtype, device=device, requires_grad=True)
    exact = logdet_exact(fn, z)
    surrogate = logdet_surrogate(fn, z, num_samples=2)
    for value in (exact, surrogate):
        assert value.dtype == dtype and value.device.type == device and value.shape == (5,)
    (exact.sum() + surrogate.sum()).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    reference = brute_logdet(fn.double().cpu(), z.detach().double().cpu())
    tol = 1e-3 if dtype == torch.float32 else 1e-8
    torch.testing.assert_close(exact.detach().double().cpu(), reference, rtol=tol, atol=tol)


def test_bad_arguments_raise_clear_errors() -> None:
    fn = mlp_decoder(2, 3)
    z = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="num_samples"):
        logdet_surrogate(fn, z, num_samples=0)
    with pytest.raises(ValueError, match="cg_tol"):
        logdet_surrogate(fn, z, cg_tol=-1.0)
    with pytest.raises(ValueError, match="probe"):
        logdet_surrogate(fn, z, probe="cauchy")
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        logdet_exact(fn, z[0])


def test_drawn_probes_have_identity_covariance() -> None:
    """The probes ``logdet_surrogate`` draws: Rademacher exactly ±1, Gaussian E[εεᵀ] = I (a 1 %
    scale error, 2 % in the second moment, is 14 standard errors here)."""
    gen = torch.Generator().manual_seed(0)
    like = torch.zeros((), dtype=torch.float64)
    signs = sample_probes((4, 1000, 3), "rademacher", like=like, generator=gen)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}
    eps = sample_probes((1_000_000, 2), "gaussian", like=like, generator=gen)
    second = eps.T @ eps / eps.shape[0]
    torch.testing.assert_close(second, torch.eye(2, dtype=torch.float64), atol=0.007, rtol=0)

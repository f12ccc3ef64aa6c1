"""The fast paths of rfdist.core.volume against independent dense computations."""

from __future__ import annotations

import pytest
import torch

from rfdist import ModelSpec, build_model
from rfdist.config import load_config
from rfdist.core.costmodel import choose_estimator
from rfdist.core.volume import (
    ReverseLinearization,
    VolumeStats,
    conjugate_gradient,
    gram_preconditioner,
    logdet_exact,
    logdet_surrogate,
)

from .helpers import brute_jacobians, brute_logdet, flat, mlp_decoder, param_grads, rel_err
from .test_volume import _SyncCounter


def test_reverse_linearization_products_match_the_brute_force_jacobian() -> None:
    fn = mlp_decoder(4, 11, seed=2)
    z = torch.randn(5, 4, dtype=torch.float64)
    jac = brute_jacobians(fn, z)  # (B, D, d)
    lin = ReverseLinearization(fn, z)
    v, u = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    torch.testing.assert_close(lin.jvp(v), (jac @ v.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(lin.vjp(u), (jac.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1))
    gram = jac.transpose(-1, -2) @ jac
    torch.testing.assert_close(lin.gram_matvec(v), (gram @ v.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(lin.output, fn(z))


def test_gram_preconditioner_is_the_inverse_mean_gram_of_its_rows() -> None:
    fn = mlp_decoder(3, 8, seed=4)
    z = torch.randn(10, 3, dtype=torch.float64)
    jac = brute_jacobians(fn, z[:4])
    mean_gram = (jac.transpose(-1, -2) @ jac).mean(0)
    mean_gram = mean_gram + 1e-3 * mean_gram.diagonal().mean() * torch.eye(3, dtype=torch.float64)
    apply = gram_preconditioner(fn, z, rows=4)
    r = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(apply(r), torch.linalg.solve(mean_gram, r.T).T)


def _model_decoder(seed: int = 0, scale: float = 0.3):
    spec = ModelSpec(data_shape=(12,), latent_dim=6, flow_layers=4, flow_hidden=(16,), activation="tanh")
    model = build_model(spec).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def test_preconditioned_cg_solves_the_dense_gram_system_in_fewer_iterations() -> None:
    model = _model_decoder()
    z = torch.randn(16, 6, dtype=torch.float64)
    jac = brute_jacobians(model.decode_flat, z)
    gram = jac.transpose(-1, -2) @ jac
    b = torch.randn(16, 6, dtype=torch.float64)
    reference = torch.linalg.solve(gram, b)
    lin = ReverseLinearization(model.decode_flat, z)
    precond = gram_preconditioner(model.decode_flat, z, rows=8)
    x, info = conjugate_gradient(lin.gram_matvec, b, tol=1e-10, max_iters=60, preconditioner=precond)
    torch.testing.assert_close(x, reference, rtol=1e-6, atol=1e-8)
    _, plain = conjugate_gradient(lin.gram_matvec, b, tol=1e-10, max_iters=60)
    assert float(info.iterations.float().mean()) < float(plain.iterations.float().mean())


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("preconditioner", ["none", "gram"])
def test_reverse_mode_surrogate_equals_the_forward_mode_one(num_samples: int, preconditioner: str) -> None:
    """Same probes, converged solves: the vjp-only surrogate has the jvp surrogate's gradient."""
    fn = mlp_decoder(4, 9, seed=3)
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for matvec in ("jvp", "vjp"):
        gen = torch.Generator().manual_seed(7)
        value = logdet_surrogate(
            fn,
            z,
            num_samples=num_samples,
            cg_tol=1e-12,
            cg_max_iters=60,
            generator=gen,
            matvec=matvec,
            preconditioner=preconditioner,
        )
        params = [z, *fn.parameters()]
        pieces = torch.autograd.grad(value.sum(), params, allow_unused=True)
        pieces = [torch.zeros_like(p) if g is None else g for p, g in zip(params, pieces, strict=True)]
        grads.append((value.detach(), flat(pieces)))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert rel_err(grads[1][1], grads[0][1]) < 1e-9


def test_fast_surrogate_gradient_is_unbiased() -> None:
    """vjp matvecs + gram preconditioner + a fixed budget: the average matches the exact gradient."""
    model = _model_decoder(1, scale=0.1)  # moderate conditioning: probe noise stays small
    fn = model.decode_flat
    z = torch.randn(3, 6, dtype=torch.float64)
    g_exact = flat(param_grads(model.flow, logdet_exact(fn, z).sum()))
    gen = torch.Generator().manual_seed(11)
    surrogate = logdet_surrogate(
        fn,
        z,
        num_samples=3000,
        cg_tol=0.0,
        cg_max_iters=6,
        check_every=0,
        generator=gen,
        matvec="vjp",
        preconditioner="gram",
    )
    assert rel_err(flat(param_grads(model.flow, surrogate.sum())), g_exact) < 0.05
    # the check can fail: one unpreconditioned step is visibly biased
    gen = torch.Generator().manual_seed(11)
    rough = logdet_surrogate(fn, z, num_samples=3000, cg_tol=0.0, cg_max_iters=1, generator=gen, matvec="vjp")
    assert rel_err(flat(param_grads(model.flow, rough.sum())), g_exact) > 0.05


def test_fast_surrogate_does_not_sync_and_reports_preconditioner_cost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = mlp_decoder(6, 20)
    z = torch.randn(10, 6, dtype=torch.float64)
    stats = VolumeStats()
    counter = _SyncCounter(monkeypatch)
    logdet_surrogate(
        fn,
        z,
        cg_tol=0.0,
        cg_max_iters=4,
        check_every=0,
        matvec="vjp",
        preconditioner="gram",
        precond_rows=4,
        stats=stats,
    )
    assert counter.count == 0
    assert stats.matvecs == 4
    assert float(stats.extra["precond_tangent_rows"]) == 4 * 6


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_checkpointed_chunks_give_brute_force_value_and_gradients(chunk: int) -> None:
    model = _model_decoder(2)
    u = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    ours = logdet_exact(model.decode_flat, u, chunk_size=chunk)
    reference = brute_logdet(model.decode_flat, u, create_graph=True)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-8)
    params = [u, *model.flow.parameters()]

    def grads(value: torch.Tensor) -> torch.Tensor:
        pieces = torch.autograd.grad(value.sum(), params, allow_unused=True)
        return flat([torch.zeros_like(p) if g is None else g for p, g in zip(params, pieces, strict=True)])

    assert rel_err(grads(ours), grads(reference)) < 1e-6


def test_model_loss_passes_the_fast_options_through() -> None:
    model = _model_decoder(3)
    x = torch.randn(8, 12, dtype=torch.float64)
    loss, parts = model.loss(
        x,
        estimator="hutchinson",
        matvec="vjp",
        preconditioner="gram",
        precond_rows=4,
        precond_every=1,  # (unset: d-aware, 8 here, which would amortise the cost asserted below)
        cg_tol=0.0,
        cg_max_iters=3,
        check_every=0,
    )
    loss.backward()
    assert float(parts["matvecs"]) == 3 and float(parts["precond_tangent_rows"]) == 4 * 6
    assert all(torch.isfinite(p.grad).all() for p in model.flow.parameters() if p.grad is not None)


def test_auto_picks_exact_at_small_d_and_hutchinson_at_large_d() -> None:
    assert choose_estimator(1) == "exact"
    assert choose_estimator(2) == "exact"
    assert choose_estimator(500) == "hutchinson"
    # more probes make hutchinson dearer, so the switch moves to larger d
    switch_k1 = next(d for d in range(1, 1000) if choose_estimator(d, num_samples=1) == "hutchinson")
    switch_k4 = next(d for d in range(1, 1000) if choose_estimator(d, num_samples=4) == "hutchinson")
    assert switch_k4 > switch_k1
    small = load_config(None, ["estimator.name=auto", "model.latent_dim=1"]).loss_options()
    large = load_config(None, ["estimator.name=auto", "model.latent_dim=300"]).loss_options()
    assert (small.estimator, large.estimator) == ("exact", "hutchinson")
    assert large.matvec == "vjp" and large.preconditioner == "gram"


@pytest.mark.slow
def test_config_defaults_meet_the_matvec_and_accuracy_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A config that only says ``hutchinson`` at d=20: ≤ 6 matvecs a step, no host sync, and a
    gradient no further from the brute-force one than the reference's 13 plain CG iterations."""
    spec = ModelSpec(data_shape=(43,), latent_dim=20, flow_layers=4, flow_hidden=(32,), activation="tanh")
    model = build_model(spec).double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    fn = model.decode_flat
    z = torch.randn(64, 20, dtype=torch.float64, generator=gen)  # mnist-like: B=50, d=20
    g_exact = flat(param_grads(model.flow, brute_logdet(fn, z, create_graph=True).sum()))
    opts = load_config(None, ["estimator.name=hutchinson", "model.latent_dim=20"]).loss_options()
    ours = {
        k: getattr(opts, k)
        for k in ("cg_tol", "cg_max_iters", "check_every", "matvec", "preconditioner", "precond_rows")
    }
    reference = {
        "cg_tol": 0.0,
        "cg_max_iters": 13,
        "check_every": 0,
        "matvec": "jvp",
        "preconditioner": "none",
    }

    def error(options: dict, seeds: range, num_samples: int = 1) -> float:
        total = 0.0
        for seed in seeds:
            probes = torch.Generator().manual_seed(seed)
            value = logdet_surrogate(fn, z, num_samples=num_samples, generator=probes, **options).sum()
            total += rel_err(flat(param_grads(model.flow, value)), g_exact)
        return total / len(seeds)

    stats = VolumeStats()
    counter = _SyncCounter(monkeypatch)
    logdet_surrogate(fn, z, stats=stats, **ours).sum().backward()
    assert counter.count == 0
    monkeypatch.undo()
    precond_matvecs = float(stats.extra["precond_tangent_rows"]) / (2 * z.shape[0])  # rows → JᵀJv units
    assert stats.matvecs + precond_matvecs <= 6
    # K=1 (the acceptance): probe noise dominates; ours is no worse than the reference
    err_ours, err_ref = error(ours, range(6)), error(reference, range(6))
    assert err_ours <= 1.05 * err_ref, (err_ours, err_ref)
    # K=64 (probe noise down 8x): the truncation shows, but stays small; one plain iteration's
    # error is several times the reference's, so the metric can tell
    many = {"seeds": range(2), "num_samples": 64}
    err_ours, err_ref = error(ours, **many), error(reference, **many)
    assert err_ours <= 1.25 * err_ref, (err_ours, err_ref)
    assert error({**reference, "cg_max_iters": 1}, **many) > 2 * err_ref


def test_measured_choice_prefers_exact_unless_hutchinson_is_clearly_faster() -> None:
    from rfdist.core.costmodel import choose_measured

    assert choose_measured({"exact": 1.0, "hutchinson": 0.9}) == "exact"  # within the margin
    assert choose_measured({"exact": 3.0, "hutchinson": 1.0}) == "hutchinson"
    assert choose_measured({"exact": float("inf"), "hutchinson": 5.0}) == "hutchinson"  # exact OOM
    assert choose_measured({"exact": 1.0, "hutchinson": float("inf")}) == "exact"


def test_measuring_the_estimators_leaves_the_model_untouched() -> None:
    from rfdist.core.costmodel import choose_measured, measure_estimators
    from rfdist.core.engine import LossOptions
    from rfdist.runtime.worker import resolve_auto

    model = _model_decoder(5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 12, dtype=torch.float64)
    options = LossOptions(estimator="exact", matvec="vjp", preconditioner="gram", cg_max_iters=4)
    seconds = measure_estimators(model, x, options)
    assert set(seconds) == {"exact", "hutchinson"} and all(0 < s < float("inf") for s in seconds.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    resolved, measured = resolve_auto(model, x, options, world=1)
    assert resolved.estimator == choose_measured(measured) and resolved.cg_max_iters == 4

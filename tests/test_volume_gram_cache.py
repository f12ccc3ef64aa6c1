"""The Gram preconditioner reused across steps (GramCache, ``precond_every``)."""

from __future__ import annotations

import pytest
import torch

from rfdist import ModelSpec, build_model
from rfdist.config import load_config
from rfdist.core.volume import GramCache, VolumeStats, conjugate_gradient, gram_inverse

from .helpers import brute_jacobians, flat, mlp_decoder, rel_err
from .test_volume import _all_rademacher, _exact_grads, _surrogate_grads


def test_cache_rebuilds_every_n_calls_and_when_the_shape_changes() -> None:
    builds: list[int] = []

    def build(d: int):
        def make() -> torch.Tensor:
            builds.append(d)
            return torch.eye(d, dtype=torch.float64)

        return make

    cache = GramCache(every=3)
    like = torch.zeros(5, 4, dtype=torch.float64)
    rebuilt = [cache.get(build(4), like)[1] for _ in range(7)]
    assert rebuilt == [True, False, False, True, False, False, True]
    assert cache.get(build(6), torch.zeros(5, 6, dtype=torch.float64))[0].shape == (6, 6)  # new d
    assert cache.get(build(6), torch.zeros(5, 6, dtype=torch.float32))[1]  # new dtype
    assert builds == [4, 4, 4, 6, 6]
    with pytest.raises(ValueError, match="every"):
        GramCache(every=0)


def test_a_preconditioner_from_another_batch_still_solves_the_dense_system() -> None:
    fn = mlp_decoder(5, 14, seed=7)
    z_old, z = torch.randn(8, 5, dtype=torch.float64), torch.randn(12, 5, dtype=torch.float64)
    inverse = gram_inverse(fn, z_old, rows=4)
    jac = brute_jacobians(fn, z)
    gram = jac.transpose(-1, -2) @ jac
    b = torch.randn(12, 5, dtype=torch.float64)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return (gram @ v.unsqueeze(-1)).squeeze(-1)

    x, info = conjugate_gradient(matvec, b, tol=1e-12, max_iters=40, preconditioner=lambda r: r @ inverse)
    torch.testing.assert_close(x, torch.linalg.solve(gram, b))
    assert bool(info.converged.all())


@pytest.mark.parametrize("matvec", ["jvp", "vjp"])
def test_surrogate_with_a_reused_preconditioner_is_exact_over_all_rademacher_probes(matvec: str) -> None:
    """Preconditioner built on other rows (as after a few steps), converged CG, all 2^d sign
    vectors: the gradient is the brute-force gradient of log det(JᵀJ); the cost is amortised."""
    d, D = 4, 9
    fn = mlp_decoder(d, D, seed=3)
    z = torch.randn(3, d, dtype=torch.float64, requires_grad=True)
    cache = GramCache(every=5)
    cache.get(lambda: gram_inverse(fn, 2.0 * torch.randn(6, d, dtype=torch.float64), rows=6), z)
    stale = cache.inverse
    stats = VolumeStats()
    probes = _all_rademacher(3, d)
    options = {"cg_tol": 1e-14, "cg_max_iters": 50, "matvec": matvec, "preconditioner": "gram"}
    est = _surrogate_grads(fn, z, probes=probes, precond_cache=cache, stats=stats, precond_rows=2, **options)
    assert cache.inverse is stale and cache.calls == 2  # reused, not rebuilt from z
    assert rel_err(est, _exact_grads(fn, z)) < 1e-8
    assert float(stats.extra["precond_tangent_rows"]) == pytest.approx(2 * d / 5)


def test_model_loss_keeps_its_gram_preconditioner_for_precond_every_steps() -> None:
    spec = ModelSpec(data_shape=(12,), latent_dim=6, flow_layers=3, flow_hidden=(16,), activation="tanh")
    model = build_model(spec).double()
    x = torch.randn(8, 12, dtype=torch.float64)
    options = {"estimator": "hutchinson", "matvec": "vjp", "preconditioner": "gram", "precond_rows": 2}
    inverses = []
    for _ in range(3):
        loss, parts = model.loss(x, precond_every=2, **options)
        loss.backward()
        inverses.append(model._gram_cache(2).inverse)
    assert inverses[0] is inverses[1] and inverses[2] is not inverses[1]
    assert float(parts["precond_tangent_rows"]) == pytest.approx(2 * 6 / 2)
    grads = flat([p.grad for p in model.flow.parameters() if p.grad is not None])
    assert bool(torch.isfinite(grads).all())
    assert model._gram_cache(1) is None  # precond_every=1: a fresh preconditioner each step


def test_config_reuses_the_preconditioner_only_where_one_row_is_dear() -> None:
    def every(*overrides: str) -> int:
        return load_config(None, ["estimator.name=hutchinson", *overrides]).loss_options().precond_every

    # 64×64×3 preset shape (d=64, 16 rows per worker): one row = 2 matvecs, so reuse it
    assert every("model.latent_dim=64", "train.batch_size=32", "scaling.num_workers=2") == 8
    # MINIBOONE (d=21, B=400) and MNIST (d=20, B=50): 8 rows cost <= 1.6 matvecs, fresh each step
    assert every("model.latent_dim=21", "train.batch_size=400", "scaling.num_workers=1") == 1
    assert every("model.latent_dim=20", "train.batch_size=50", "scaling.num_workers=1") == 1
    assert every("model.latent_dim=64", "estimator.precond_every=3") == 3

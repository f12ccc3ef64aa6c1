"""The hand-written-tangent paths of rfdist.core.volume against brute force and torch.func."""

from __future__ import annotations

import pytest
import torch

from rfdist import ModelSpec, build_model
from rfdist.core.volume import VolumeStats, gram_preconditioner, logdet_exact, logdet_surrogate

from .helpers import brute_logdet, flat, param_grads, rel_err
from .test_volume import _SyncCounter


def _model(d: int = 3, D: int = 7, scale: float = 0.3, **extra):
    spec = ModelSpec(
        data_shape=(D,), latent_dim=d, flow_layers=3, flow_hidden=(16, 16), activation="tanh", **extra
    )
    model = build_model(spec).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


@pytest.mark.parametrize("d", [1, 3])
def test_exact_on_tangents_matches_brute_force_value_and_gradients(d: int) -> None:
    model = _model(d)
    ops = model.tangent_ops()
    assert ops is not None
    u = torch.randn(5, d, dtype=torch.float64, requires_grad=True)
    ours, out = logdet_exact(model.decode_flat, u, tangents=ops, return_output=True)
    reference = brute_logdet(model.decode_flat, u, create_graph=True)
    torch.testing.assert_close(ours, reference, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(out, model.decode_flat(u))
    params = [u, *model.flow.parameters()]
    g_ours = flat(torch.autograd.grad(ours.sum(), params))
    assert rel_err(g_ours, flat(torch.autograd.grad(reference.sum(), params))) < 1e-7


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("preconditioner", ["none", "gram"])
def test_surrogate_on_tangents_equals_the_torch_func_one(num_samples: int, preconditioner: str) -> None:
    """Same probes, converged solves: value and gradient (parameters and z) as the jvp form's."""
    model = _model(4, 9)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    results = []
    for ops in (None, model.tangent_ops()):
        gen = torch.Generator().manual_seed(5)
        value, out = logdet_surrogate(
            model.decode_flat,
            z,
            num_samples=num_samples,
            cg_tol=1e-13,
            cg_max_iters=80,
            generator=gen,
            preconditioner=preconditioner,
            tangents=ops,
            return_output=True,
        )
        params = [z, *model.flow.parameters()]
        grads = torch.autograd.grad((value + out.sum(-1)).sum(), params, allow_unused=True)
        pieces = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
        results.append((value.detach(), flat(pieces)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-8, atol=1e-10)
    assert rel_err(results[1][1], results[0][1]) < 1e-8


def test_surrogate_on_tangents_is_unbiased_against_brute_force() -> None:
    model = _model(3, 7, scale=0.1)  # moderate conditioning: probe noise stays small
    z = torch.randn(4, 3, dtype=torch.float64)
    g_exact = flat(param_grads(model.flow, brute_logdet(model.decode_flat, z, create_graph=True).sum()))
    gen = torch.Generator().manual_seed(2)
    value = logdet_surrogate(
        model.decode_flat,
        z,
        num_samples=4000,
        cg_tol=1e-12,
        cg_max_iters=30,
        generator=gen,
        tangents=model.tangent_ops(),
    )
    assert rel_err(flat(param_grads(model.flow, value.sum())), g_exact) < 0.05


def test_preconditioner_on_tangents_is_the_torch_func_one() -> None:
    model = _model(4, 9)
    z = torch.randn(10, 4, dtype=torch.float64)
    r = torch.randn(5, 4, dtype=torch.float64)
    ours = gram_preconditioner(model.decode_flat, z, rows=6, tangents=model.tangent_ops())(r)
    torch.testing.assert_close(ours, gram_preconditioner(model.decode_flat, z, rows=6)(r))


def test_tangent_path_has_no_host_sync_and_is_used_by_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model(4, 9, actnorm=True)
    assert model.tangent_ops() is not None
    assert build_model(ModelSpec(data_shape=(5,), latent_dim=2, coupling="spline")).tangent_ops() is None
    z = torch.randn(6, 4, dtype=torch.float64)
    stats = VolumeStats()
    counter = _SyncCounter(monkeypatch)
    logdet_surrogate(
        model.decode_flat,
        z,
        cg_max_iters=4,
        check_every=0,
        preconditioner="gram",
        stats=stats,
        tangents=model.tangent_ops(),
    ).sum().backward()
    assert counter.count == 0
    assert stats.matvecs == 4

"""rfdist.core.volume on every available device and in float32/float64, against float64 CPU brute force.

Marked ``gpu``: the GPU kit (``bench/gpu_check.sh``) runs ``pytest -m gpu -k cuda``; on a machine
without a GPU the same tests run on CPU only. TF32 is switched off here so float32 on CUDA is
compared as float32 (the tolerances are float32's, not TF32's).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rfdist import ModelSpec, build_model
from rfdist.core.volume import conjugate_gradient, logdet_exact, logdet_surrogate

from .conftest import available_devices
from .helpers import brute_logdet, flat, mlp_decoder, param_grads, rel_err

pytestmark = pytest.mark.gpu

DEVICES = available_devices()
DTYPES = [torch.float32, torch.float64]
# value tolerance and gradient relative error, per dtype
TOL = {torch.float32: (2e-3, 2e-3), torch.float64: (1e-7, 1e-6)}


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _reference(fn: torch.nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force log det(JᵀJ) and its parameter gradient, float64 on CPU, same weights."""
    ref_fn = copy.deepcopy(fn).double().cpu()
    value = brute_logdet(ref_fn, z.detach().double().cpu(), create_graph=True)
    return value.detach(), flat(param_grads(ref_fn, value.sum()))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_logdet_exact_matches_brute_force_on_device(device: str, dtype: torch.dtype) -> None:
    fn = mlp_decoder(5, 40).to(device=device, dtype=dtype)
    z = torch.randn(6, 5, dtype=dtype, device=device)
    value_tol, grad_tol = TOL[dtype]

    ours = logdet_exact(fn, z)
    assert ours.device.type == device and ours.dtype == dtype
    ref_value, ref_grad = _reference(fn, z)
    torch.testing.assert_close(ours.detach().double().cpu(), ref_value, rtol=value_tol, atol=value_tol)
    assert rel_err(flat(param_grads(fn, ours.sum())).double().cpu(), ref_grad) < grad_tol

    chunked = logdet_exact(fn, z, chunk_size=2)
    torch.testing.assert_close(chunked, ours, rtol=value_tol, atol=value_tol)


@pytest.mark.parametrize(
    "spec",
    [
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
    ids=["spline", "multiscale"],
)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_model_logdet_matches_brute_force_on_device(spec: ModelSpec, device: str, dtype: torch.dtype) -> None:
    model = build_model(spec).double()
    with torch.no_grad():  # perturb the identity-initialised flow so J is non-trivial
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref_model = copy.deepcopy(model)
    model = model.to(device=device, dtype=dtype)
    u = torch.randn(4, spec.latent_dim, dtype=torch.float64)
    value_tol, grad_tol = TOL[dtype]

    ours = logdet_exact(model.decode_flat, u.to(device=device, dtype=dtype), chunk_size=2)
    reference = brute_logdet(ref_model.decode_flat, u, create_graph=True)
    torch.testing.assert_close(
        ours.detach().double().cpu(), reference.detach(), rtol=value_tol, atol=value_tol
    )
    g_ours = flat(param_grads(model.flow, ours.sum())).double().cpu()
    g_ref = flat(param_grads(ref_model.flow, reference.sum()))
    assert rel_err(g_ours, g_ref) < 5 * grad_tol


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("device", DEVICES)
def test_conjugate_gradient_matches_dense_solve_on_device(device: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(16, 30, 30, dtype=torch.float64, generator=gen))
    a64 = q @ torch.diag_embed(torch.logspace(0, 2, 30, dtype=torch.float64).expand(16, 30)) @ q.mT
    b64 = torch.randn(16, 30, dtype=torch.float64, generator=gen)
    a, b = a64.to(device=device, dtype=dtype), b64.to(device=device, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 1e-10

    x, info = conjugate_gradient(lambda v: (a @ v.unsqueeze(-1)).squeeze(-1), b, tol=tol, max_iters=200)
    assert x.device.type == device and x.dtype == dtype
    assert bool(info.converged.all())
    true_residual = (b64 - (a64 @ x.double().cpu().unsqueeze(-1)).squeeze(-1)).norm(dim=-1) / b64.norm(dim=-1)
    assert float(true_residual.max()) <= 10 * tol
    reference = torch.linalg.solve(a64, b64)
    forward_err = ((x.double().cpu() - reference).norm(dim=-1) / reference.norm(dim=-1)).max()
    assert float(forward_err) <= 1e2 * tol * 10  # condition number × tolerance, with float slack


@pytest.mark.parametrize("device", DEVICES)
def test_surrogate_gradient_is_unbiased_on_device(device: str) -> None:
    fn = mlp_decoder(4, 9, seed=3).to(device)
    z = torch.randn(3, 4, dtype=torch.float64, device=device)
    g_exact = flat(param_grads(fn, logdet_exact(fn, z).sum()))
    gen = torch.Generator(device=device).manual_seed(1234)
    surrogate = logdet_surrogate(fn, z, num_samples=4000, cg_tol=1e-12, cg_max_iters=50, generator=gen)
    assert surrogate.device.type == device
    g_est = flat(param_grads(fn, surrogate.sum()))
    assert math.isfinite(float(g_est.norm()))
    assert rel_err(g_est, g_exact) < 0.05

"""Bijective layers: invertibility, log|det J| and jvp/vjp/vmap against brute-force Jacobians."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp, vjp, vmap

from rfdist.core.flows import (
    ActNorm,
    AffineCoupling,
    Chain,
    ImageAffineCoupling,
    MultiScaleFlow,
    Permutation,
    SplineCoupling,
    vector_flow,
)
from rfdist.core.flows.image import squeeze, unsqueeze


def _perturbed(layer: torch.nn.Module) -> torch.nn.Module:
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def _layers() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    mask = torch.tensor([True, False, True, False, False])
    return {
        "affine": (AffineCoupling(5, mask, (16, 16), "tanh"), (5,)),
        "spline": (SplineCoupling(5, mask, (16,), bins=6, bound=3.0), (5,)),
        "actnorm": (ActNorm(5), (5,)),
        "permutation": (Permutation(5, seed=1), (5,)),
        "chain": (vector_flow(4, layers=3, hidden=(8,), actnorm=True, permute=True), (4,)),
        "checkerboard": (
            ImageAffineCoupling((2, 4, 4), "checkerboard", parity=1, hidden=4, blocks=1),
            (2, 4, 4),
        ),
        "channel": (ImageAffineCoupling((2, 4, 4), "channel", parity=0, hidden=4, blocks=1), (2, 4, 4)),
        "multiscale": (MultiScaleFlow((1, 4, 4), scales=1, couplings=1, hidden=4, blocks=1), (1, 4, 4)),
    }


LAYER_NAMES = list(_layers())


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_inverse_undoes_forward(name: str) -> None:
    layer, shape = _layers()[name]
    layer = _perturbed(layer)
    z = torch.randn(6, *shape, dtype=torch.float64)
    x = layer(z)
    torch.testing.assert_close(layer.inverse(x), z, rtol=1e-9, atol=1e-9)
    x2, _ = layer.forward_and_ladj(z)
    torch.testing.assert_close(x2, x)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_log_abs_det_matches_brute_force_jacobian(name: str) -> None:
    layer, shape = _layers()[name]
    layer = _perturbed(layer)
    z = torch.randn(3, *shape, dtype=torch.float64)
    _, ladj = layer.forward_and_ladj(z)
    x = layer(z)
    _, inv_ladj = layer.inverse_and_ladj(x)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0)).flatten(), z[b])
        jac = jac.reshape(z[b].numel(), z[b].numel())
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(ladj[b], expected, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(inv_ladj[b], -expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_jvp_vjp_and_vmap_work_through_every_layer(name: str) -> None:
    layer, shape = _layers()[name]
    layer = _perturbed(layer)
    z = torch.randn(2, *shape, dtype=torch.float64)
    n = z[0].numel()
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0)).flatten(), z[b]).reshape(n, n)
            for b in range(2)
        ]
    )
    tangents = torch.randn(3, *z.shape, dtype=torch.float64)
    _, pushed = vmap(lambda t: jvp(layer, (z,), (t,)), out_dims=(None, 0))(tangents)
    expected = torch.einsum("bij,kbj->kbi", jac, tangents.flatten(2))
    torch.testing.assert_close(pushed.flatten(2), expected, rtol=1e-8, atol=1e-8)

    _, pullback = vjp(layer, z)
    cotangents = torch.randn(3, *z.shape, dtype=torch.float64)
    (pulled,) = vmap(pullback)(cotangents)
    expected = torch.einsum("bij,kbi->kbj", jac, cotangents.flatten(2))
    torch.testing.assert_close(pulled.flatten(2), expected, rtol=1e-8, atol=1e-8)


def test_squeeze_is_a_permutation_with_an_inverse() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float64).view(1, 2, 4, 6)
    s = squeeze(x)
    assert s.shape == (1, 8, 2, 3)
    assert sorted(s.flatten().tolist()) == sorted(x.flatten().tolist())
    torch.testing.assert_close(unsqueeze(s), x)


def test_multiscale_latent_order_starts_at_the_deepest_scale() -> None:
    flow = MultiScaleFlow((1, 8, 8), scales=2, couplings=1, hidden=4, blocks=1)
    order = flow.latent_order()
    assert sorted(order.tolist()) == list(range(64))
    # The deepest scale's variables are touched by every coupling: perturbing one of them
    # changes the output through all stages, while a shallow one is factored out after scale 1.
    # Check structurally: the first 16 positions are exactly what survives two squeeze+splits.
    index = torch.arange(64).view(1, 1, 8, 8)
    deep = squeeze(squeeze(index)[:, :2])[:, :4].flatten()
    assert order[:16].tolist() == deep.tolist()


def test_actnorm_initialisation_standardises_the_latent_side() -> None:
    layer = ActNorm(3)
    x = torch.randn(500, 3) * torch.tensor([2.0, 0.5, 3.0]) + torch.tensor([1.0, -2.0, 0.0])
    layer.initialize_(x)
    z = layer.inverse(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)


def test_bad_layer_arguments_raise() -> None:
    with pytest.raises(ValueError, match="coupling"):
        vector_flow(4, coupling="quadratic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="squeeze"):
        MultiScaleFlow((1, 7, 7), scales=1)
    with pytest.raises(ValueError, match="even channel"):
        ImageAffineCoupling((3, 4, 4), "channel", parity=0)
    with pytest.raises(ValueError, match="at least 2"):
        AffineCoupling(1, torch.tensor([True]))


def test_chain_composes_in_order() -> None:
    a, b = _perturbed(ActNorm(3)), _perturbed(ActNorm(3))
    chain = Chain([a, b])
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(chain(z), b(a(z)))
    torch.testing.assert_close(
        chain.forward_and_ladj(z)[1], a.forward_and_ladj(z)[1] + b.forward_and_ladj(a(z))[1]
    )


@pytest.mark.parametrize("features", [2, 5, 6])
def test_chain_passing_halves_between_couplings_is_the_layer_by_layer_composition(features: int) -> None:
    """Alternating checkered couplings hand their halves on (no merge/re-split); a run broken
    by another layer or by two equal masks in a row falls back: same maps and log-dets."""
    even, odd = (torch.arange(features) % 2 == p for p in (0, 1))
    runs = vector_flow(features, layers=4, hidden=(8,), activation="tanh")
    broken = Chain(
        [AffineCoupling(features, m, (8,)) for m in (odd, even)]
        + [ActNorm(features)]
        + [AffineCoupling(features, m, (8,)) for m in (even, even, odd)]
    )
    for chain in (_perturbed(runs), _perturbed(broken)):
        z = torch.randn(7, features, dtype=torch.float64)
        x, total = z, torch.zeros(7, dtype=torch.float64)
        for layer in chain.layers:
            x, ladj = layer.forward_and_ladj(x)
            total = total + ladj
        torch.testing.assert_close(chain(z), x, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(chain.forward_and_ladj(z)[1], total, rtol=1e-12, atol=1e-12)
        back, total = x, torch.zeros(7, dtype=torch.float64)
        for layer in reversed(chain.layers):
            back, ladj = layer.inverse_and_ladj(back)
            total = total + ladj
        torch.testing.assert_close(chain.inverse(x), back, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(chain.inverse_and_ladj(x)[1], total, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back, z, rtol=1e-9, atol=1e-9)
        t = torch.randn(3, 7, features, dtype=torch.float64)  # leading tangent dimension K = 3
        y, ty = z, t
        for layer in chain.layers:
            y, ty = layer.forward_and_tangent(y, ty)
        y_chain, ty_chain = chain.forward_and_tangent(z, t)
        torch.testing.assert_close(y_chain, y, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ty_chain, ty, rtol=1e-12, atol=1e-12)
        _, jvp = torch.func.jvp(chain, (z,), (t[0],))
        torch.testing.assert_close(ty_chain[0], jvp, rtol=1e-10, atol=1e-12)


def _tangent_layers() -> dict[str, torch.nn.Module]:
    mask = torch.tensor([True, False, True, False, False])
    out = {f"affine-{a}": AffineCoupling(5, mask, (16, 16), a) for a in ("tanh", "relu", "elu", "silu")}
    out["actnorm"] = ActNorm(5)
    out["permutation"] = Permutation(5, seed=1)
    out["chain"] = vector_flow(5, layers=3, hidden=(8,), activation="tanh", actnorm=True, permute=True)
    return out


@pytest.mark.parametrize("name", list(_tangent_layers()))
def test_hand_written_tangents_match_brute_force_jacobian(name: str) -> None:
    """forward_and_tangent, linearize().jvp/.vjp against autograd Jacobians, and the tangents'
    parameter gradient against torch.func.jvp's (the surrogate differentiates through them)."""
    layer = _perturbed(_tangent_layers()[name])
    assert layer.supports_tangents
    z = torch.randn(4, 5, dtype=torch.float64)
    jac = torch.stack(
        [torch.autograd.functional.jacobian(lambda v: layer(v.unsqueeze(0))[0], z[b]) for b in range(4)]
    )
    tangents = torch.randn(3, 4, 5, dtype=torch.float64)
    out, pushed = layer.forward_and_tangent(z, tangents)
    torch.testing.assert_close(out, layer(z), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(pushed, torch.einsum("bij,kbj->kbi", jac, tangents), rtol=1e-8, atol=1e-8)
    out2, lin = layer.linearize(z)
    torch.testing.assert_close(out2, out.detach())
    torch.testing.assert_close(lin.jvp(tangents), pushed.detach(), rtol=1e-8, atol=1e-8)
    cot = torch.randn(3, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(lin.vjp(cot), torch.einsum("bij,kbi->kbj", jac, cot), rtol=1e-8, atol=1e-8)
    params = [p for p in layer.parameters() if p.requires_grad]
    if params:
        weights = torch.randn_like(pushed)
        mine = torch.autograd.grad((pushed * weights).sum(), params, allow_unused=True, retain_graph=True)
        _, ref = vmap(lambda t: jvp(layer, (z,), (t,)), out_dims=(None, 0))(tangents)
        theirs = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True)
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)
        # the differentiable linearisation: same output, products and parameter gradients
        out3, lin3 = layer.linearize(z, differentiable=True)
        pushed3 = lin3.jvp(tangents)
        torch.testing.assert_close(pushed3, pushed, rtol=1e-10, atol=1e-10)
        again = torch.autograd.grad((pushed3 * weights).sum() + out3.sum(), params, allow_unused=True)
        ref_out = torch.autograd.grad((pushed * weights).sum() + out.sum(), params, allow_unused=True)
        for a, b in zip(again, ref_out, strict=True):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_plain_affine_coupling_is_zukos_transform() -> None:
    """The plain-torch passes compute zuko's coupling transform (same parameters, same maths)."""
    layer = _perturbed(AffineCoupling(5, torch.tensor([True, False, True, False, False]), (16,), "elu"))
    with torch.no_grad():
        layer.lazy.hyper[-1].bias.mul_(40.0)  # large raw scales: the soft bound matters
    z = torch.randn(6, 5, dtype=torch.float64)
    y, ladj = layer.forward_and_ladj(z)
    y_ref, ladj_ref = layer.lazy().call_and_ladj(z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj, ladj_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.inverse(y), layer.lazy().inv(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("features", [2, 5, 6])
@pytest.mark.parametrize("mask_kind", ["even", "odd", "irregular"])
def test_affine_coupling_split_and_merge_for_every_mask(features: int, mask_kind: str) -> None:
    """Strided views (checkered masks) and gathers (others) route the same features."""
    if mask_kind == "irregular":  # not checkered: the first two condition the rest
        features = max(features, 4)
        mask = torch.arange(features) < 2
    else:
        mask = torch.arange(features) % 2 == (0 if mask_kind == "even" else 1)
    layer = _perturbed(AffineCoupling(features, mask, (8,), "tanh"))
    z = torch.randn(3, features, dtype=torch.float64)
    y, ladj = layer.forward_and_ladj(z)
    y_ref, ladj_ref = layer.lazy().call_and_ladj(z)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ladj, ladj_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.inverse(y), z, rtol=1e-10, atol=1e-10)

"""Sequential two-step (``train.manifold_steps``): after the manifold phase only the density moves."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from rfdist import ModelSpec, build_model
from rfdist.core.engine import LossOptions, fit, make_optimizer, train_step

TWO_STEP = LossOptions(mode="two_step", beta=5.0)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(data_shape=(3,), latent_dim=2, flow_hidden=(16,), density_layers=2, seed=0))


def _split(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(manifold, density) parameters by name, cloned."""
    state = {name: p.detach().clone() for name, p in model.named_parameters()}
    density = {k: v for k, v in state.items() if k.startswith("density.")}
    return {k: v for k, v in state.items() if k not in density}, density


def _data(n: int = 256) -> torch.Tensor:
    torch.manual_seed(1)
    u = torch.randn(n, 2)
    return torch.cat([u, (u**2).sum(-1, keepdim=True) * 0.3], dim=-1)


def test_frozen_steps_move_only_the_density_with_its_own_gradient() -> None:
    model, x = _model(), _data()
    optimizer = make_optimizer(model.parameters(), 1e-2)
    for _ in range(4):  # joint two-step steps: Adam now carries momentum for every parameter
        assert not train_step(model, optimizer, x, TWO_STEP).skipped
    manifold, density = _split(model)
    assert manifold and density

    # the density's gradient of a frozen step is that of -log p_U(sg(g†(x))) alone
    model.zero_grad(set_to_none=True)
    (-model.density.log_prob(model.encode(x).detach()).mean()).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if n.startswith("density.")}
    result = train_step(model, optimizer, x, TWO_STEP, freeze_manifold=True)
    assert not result.skipped and "reconstruction" in result.metrics
    for name, p in model.named_parameters():
        if name.startswith("density."):
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-6)
        else:
            assert p.grad is None, name

    for _ in range(3):
        train_step(model, optimizer, x, TWO_STEP, freeze_manifold=True)
    frozen, moved = _split(model)
    for name, value in manifold.items():  # bitwise: no step, no momentum drift
        assert torch.equal(frozen[name], value), name
    assert any(not torch.equal(moved[k], v) for k, v in density.items())


def test_fit_freezes_the_manifold_after_manifold_steps() -> None:
    model, x = _model(), _data()
    snapshots: dict[int, tuple[dict, dict]] = {}
    fit(
        model, x, steps=8, batch_size=64, lr=1e-2, options=TWO_STEP, manifold_steps=5,
        callback=lambda step, _: snapshots.__setitem__(step, _split(model)),
    )  # fmt: skip
    (m4, _), (m5, d5), (m8, d8) = snapshots[4], snapshots[5], snapshots[8]
    assert any(not torch.equal(m4[k], m5[k]) for k in m5)  # step 5 still trained the manifold
    assert all(torch.equal(m5[k], m8[k]) for k in m5)  # steps 6-8 did not
    assert any(not torch.equal(d5[k], d8[k]) for k in d5)


def test_frozen_steps_under_ddp() -> None:
    # DDP's reducer expects a gradient for every parameter on every step; the frozen step keeps
    # them all in the graph (weight 0) so consecutive frozen steps do not trip it.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model, x = _model(), _data()
        ddp = DistributedDataParallel(model)
        optimizer = make_optimizer(ddp.parameters(), 1e-2)
        train_step(ddp, optimizer, x, TWO_STEP)
        manifold, density = _split(model)
        for _ in range(3):
            assert not train_step(ddp, optimizer, x, TWO_STEP, freeze_manifold=True).skipped
        frozen, moved = _split(model)
        assert all(torch.equal(frozen[k], v) for k, v in manifold.items())
        assert any(not torch.equal(moved[k], v) for k, v in density.items())
    finally:
        dist.destroy_process_group()

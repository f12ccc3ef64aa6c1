"""Gradient clipping and the likelihood warm-up, checked against independent computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rfdist.config import load_config
from rfdist.core.builders import build_model
from rfdist.core.engine import LossOptions, fit, train_step

PRESET = Path(__file__).resolve().parents[1] / "rfdist" / "presets" / "sphere.yaml"
BETA = 50.0


def _tiny_flow():
    cfg = load_config(PRESET, ["model.flow_layers=2", "model.flow_hidden=[8]", "model.density_hidden=[8]"])
    return build_model(cfg.model.spec((3,), 0)).double()


def _points(n: int = 32) -> torch.Tensor:
    x = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("clip_fraction", [0.1, None])
def test_grad_clip_scales_the_update_to_the_clip_norm(clip_fraction: float | None) -> None:
    model, x = _tiny_flow(), _points()
    options = LossOptions(beta=BETA)
    loss, _ = model(x, **options.kwargs())
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    g = torch.cat(
        [(torch.zeros_like(p) if gr is None else gr).flatten() for p, gr in zip(params, grads, strict=True)]
    )
    before = torch.cat([p.detach().flatten() for p in params])

    clip = None if clip_fraction is None else clip_fraction * float(g.norm())
    result = train_step(model, torch.optim.SGD(params, lr=1.0), x, options, grad_clip=clip)
    step = torch.cat([p.detach().flatten() for p in params]) - before
    assert result.metrics["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-6)  # before clipping
    expected = -g if clip is None else -g * clip / g.norm()
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-9)


def test_warmup_ramps_the_likelihood_weight_linearly() -> None:
    """loss = w·nll + β·reconstruction (exact estimator): recover w from each step's parts."""
    warmup = 4
    history = fit(
        _tiny_flow(), _points(64), steps=6, batch_size=64, options=LossOptions(beta=BETA), warmup_steps=warmup
    )
    weights = [(h["loss"] - BETA * h["reconstruction"]) / h["nll"] for h in history]
    expected = [min(1.0, s / warmup) for s in range(1, 7)]
    assert weights == pytest.approx(expected, rel=1e-4, abs=1e-4)

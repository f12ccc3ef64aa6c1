"""make_optimizer: torch's fused Adam, the same updates as the default implementation."""

from __future__ import annotations

import copy

import torch

from rfdist.core.engine import load_optimizer_state, make_optimizer


def test_fused_adam_takes_the_default_adams_steps_and_loads_its_state() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    twin = copy.deepcopy(model)
    fused, plain = make_optimizer(model.parameters(), 1e-2), torch.optim.Adam(twin.parameters(), lr=1e-2)
    assert fused.param_groups[0]["fused"] is True
    for _ in range(5):
        x = torch.randn(16, 3, dtype=torch.float64)
        for m, opt in ((model, fused), (twin, plain)):
            opt.zero_grad()
            m(x).pow(2).sum().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    resumed = make_optimizer(model.parameters(), 1e-2)
    load_optimizer_state(resumed, plain.state_dict())  # a checkpoint written before the fused optimizer
    assert resumed.param_groups[0]["fused"] is True
    assert int(resumed.state[next(model.parameters())]["step"]) == 5
    resumed.step()

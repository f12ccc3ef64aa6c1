"""A non-uniform density on the sphere S² (D=3, d=2) learned by exact ML training."""

from __future__ import annotations

import pytest
import torch

from .training import train_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sphere():
    return train_preset("sphere")


def test_sphere_samples_lie_on_the_sphere(sphere) -> None:
    model, metrics = sphere
    assert metrics["sample_off_manifold"] < 0.05
    with torch.no_grad():
        samples = model.sample(2000)
    assert float((samples.norm(dim=-1) - 1).abs().quantile(0.9)) < 0.1


def test_sphere_test_nll_is_close_to_the_true_entropy(sphere) -> None:
    _, metrics = sphere
    # Reported in the issue note; the bound only guards against a broken fit.
    assert metrics["test_nll"] - metrics["true_entropy"] < 0.3

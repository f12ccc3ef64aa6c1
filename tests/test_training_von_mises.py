"""The von Mises circle learned by exact ML training, against the true density (the paper's κ=1, loc=π/2 circle)."""

from __future__ import annotations

import math

import pytest

from .training import train_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exact():
    return train_preset("von-mises")


@pytest.fixture(scope="module")
def two_step():
    return train_preset("von-mises", "train.mode=two_step", "train.max_steps=500")


def test_exact_ml_reaches_the_true_entropy(exact) -> None:
    _, metrics = exact
    assert abs(metrics["test_nll"] - metrics["true_entropy"]) < 0.1


def test_exact_density_integrates_to_one_over_the_circle(exact) -> None:
    # ``mass`` integrates the model's density over the *true* circle. At β = 50 exact ML learns a
    # curve slightly off the circle (a shorter curve carries more density per unit length, which
    # the likelihood rewards more than the reconstruction term costs; docs/results.md, sphere), so
    # the mass is not exactly 1: 0.99–1.03 over seeds 0–2 on one 2-core machine, 1.109 for seed 0
    # on another (the 1500-step trajectory differs with the CPU's float kernels). The density's
    # *shape* must match too: KL to it renormalised on the true circle (kl + log mass) was 0.07
    # there, while the two-step fixture (no volume term) has mass 0.91 but kl + log mass 1.35.
    _, metrics = exact
    assert abs(metrics["mass"] - 1.0) < 0.15
    assert metrics["kl"] + math.log(metrics["mass"]) < 0.1


def test_exact_samples_lie_on_the_circle(exact) -> None:
    _, metrics = exact
    assert metrics["sample_off_manifold"] < 0.05


def test_exact_ml_beats_two_step_in_kl(exact, two_step) -> None:
    assert exact[1]["kl"] < two_step[1]["kl"]
    assert exact[1]["kl"] < 0.05

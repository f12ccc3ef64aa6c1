"""The von Mises circle learned by exact ML training, against the true density (DESIGN §4)."""

from __future__ import annotations

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
    _, metrics = exact
    assert abs(metrics["mass"] - 1.0) < 0.05


def test_exact_samples_lie_on_the_circle(exact) -> None:
    _, metrics = exact
    assert metrics["sample_off_manifold"] < 0.05


def test_exact_ml_beats_two_step_in_kl(exact, two_step) -> None:
    assert exact[1]["kl"] < two_step[1]["kl"]
    assert exact[1]["kl"] < 0.05

"""The von Mises circle learned with the stochastic (Hutchinson K=1 + CG) estimator."""

from __future__ import annotations

import pytest

from .training import train_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hutchinson():
    return train_preset(
        "von-mises", "estimator.name=hutchinson", "estimator.num_samples=1", "train.max_steps=1200"
    )


@pytest.fixture(scope="module")
def two_step():
    return train_preset("von-mises", "train.mode=two_step", "train.max_steps=500", "seed=1")


def test_hutchinson_reaches_the_true_entropy(hutchinson) -> None:
    _, metrics = hutchinson
    assert abs(metrics["test_nll"] - metrics["true_entropy"]) < 0.15


def test_hutchinson_density_integrates_to_one_and_samples_on_circle(hutchinson) -> None:
    _, metrics = hutchinson
    assert abs(metrics["mass"] - 1.0) < 0.05
    assert metrics["sample_off_manifold"] < 0.05


def test_hutchinson_beats_two_step_in_kl(hutchinson, two_step) -> None:
    assert hutchinson[1]["kl"] < two_step[1]["kl"]

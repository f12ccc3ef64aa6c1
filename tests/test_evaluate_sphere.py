"""Density on the sphere vs the truth: quadrature KL and mass against closed forms, and `rfdist eval`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rfdist.data.synthetic import SphereVMFMixture
from rfdist.eval.metrics import sphere_metrics


def _vmf(mean, kappa: float = 6.0) -> SphereVMFMixture:
    return SphereVMFMixture(means=(tuple(mean),), kappas=(kappa,), weights=(1.0,))


def test_the_true_density_has_zero_kl_and_unit_mass() -> None:
    truth = SphereVMFMixture()
    m = sphere_metrics(truth.log_density, truth)
    assert m["kl"] == pytest.approx(0.0, abs=1e-12)
    assert m["mass"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("angle", [0.3, 1.2])
def test_kl_of_a_rotated_vmf_matches_the_closed_form(angle: float) -> None:
    # KL(vMF(μ1, κ) ‖ vMF(μ2, κ)) on S² = κ A(κ) (1 − μ1·μ2), A(κ) = coth κ − 1/κ
    kappa = 6.0
    truth = _vmf((0.0, 0.0, 1.0), kappa)
    model = _vmf((math.sin(angle), 0.0, math.cos(angle)), kappa)
    expected = kappa * (1 / math.tanh(kappa) - 1 / kappa) * (1 - math.cos(angle))
    m = sphere_metrics(model.log_density, truth)
    assert m["kl"] == pytest.approx(expected, rel=1e-3)
    assert m["kl_normalized"] == pytest.approx(expected, rel=1e-3, abs=1e-4)
    assert m["mass"] == pytest.approx(1.0, abs=1e-4)


def test_half_the_mass_off_the_sphere_shows_in_mass_and_kl() -> None:
    # q = p/2 everywhere on the sphere: mass 1/2 and KL(p ‖ q) = log 2
    truth = SphereVMFMixture()
    m = sphere_metrics(lambda x: truth.log_density(x) - math.log(2), truth)
    assert m["mass"] == pytest.approx(0.5, abs=1e-4)
    assert m["kl"] == pytest.approx(math.log(2), abs=1e-4)
    assert m["kl_normalized"] == pytest.approx(0.0, abs=1e-4)  # the shape is right


def test_eval_on_the_sphere_reports_kl_mass_and_plots_the_density(tmp_path) -> None:
    from rfdist import ModelSpec, build_model
    from rfdist.recipes.evaluate import EvalOptions, evaluate_model, load_eval_data

    torch.manual_seed(0)
    spec = ModelSpec(data_shape=(3,), latent_dim=2, flow_layers=2, flow_hidden=(8,), density_layers=1,
                     density_hidden=(8,))  # fmt: skip
    model = build_model(spec).eval()
    data = load_eval_data("synthetic:sphere", test_rows=200)
    opts = EvalOptions(data="synthetic:sphere", fd_samples=0, progress=False)
    result = evaluate_model(model, data, opts, plot_dir=tmp_path)
    # the grid holds the model's own log-density (checked on a few cells), and kl/mass are its
    # quadrature against the truth
    z, phi = result.scores["sphere_z"], result.scores["sphere_phi"]
    log_model, log_true = result.scores["sphere_log_model"], result.scores["sphere_log_true"]
    cells = [(0, 0), (57, 123), (199, 399)]
    points = torch.tensor(
        [[math.sqrt(1 - z[i] ** 2) * math.cos(phi[j]), math.sqrt(1 - z[i] ** 2) * math.sin(phi[j]), z[i]]
         for i, j in cells]
    )  # fmt: skip
    with torch.no_grad():
        direct = model.log_prob(points.float()).double()
    for (i, j), value in zip(cells, direct, strict=True):
        assert log_model[i, j] == pytest.approx(float(value), abs=1e-5)
        assert log_true[i, j] == pytest.approx(
            float(data.truth.log_density(points[cells.index((i, j))][None]))
        )
    area = 4 * math.pi / log_model.size
    kl = float((np.exp(log_true) * (log_true - log_model)).sum() * area)
    assert result.metrics["kl"] == pytest.approx(kl, rel=1e-9)
    assert result.metrics["mass"] == pytest.approx(float(np.exp(log_model).sum() * area), rel=1e-9)
    assert (tmp_path / "sphere_density.png") in result.plots
    assert (tmp_path / "sphere_density.png").stat().st_size > 10_000

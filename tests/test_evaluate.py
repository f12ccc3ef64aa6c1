"""Evaluation metrics against closed forms and hand computations, and the `rfdist eval` command."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from rfdist.eval.metrics import (
    auroc,
    frechet_distance,
    frechet_gaussians,
    log_likelihoods,
    ood_accuracy,
    ood_stump,
    preprocess_rows,
)

# ------------------------------------------------------------------ Fréchet distance


def test_frechet_closed_form_for_two_gaussians() -> None:
    # N(μ1, diag(1, 4)) vs N(μ2, diag(9, 1)): commuting covariances, so
    # d² = ‖μ1−μ2‖² + Σ (σ1 − σ2)² over the diagonal = (1 + 4) + ((1−3)² + (2−1)²) = 5 + 5 = 10
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    cov1, cov2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_gaussians(mu1, cov1, mu2, cov2) == pytest.approx(10.0, abs=1e-12)


def test_frechet_matches_scipy_sqrtm_for_general_covariances() -> None:
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov1, cov2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    cross = sqrtm(cov1 @ cov2).real  # the FID reference formula
    expected = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(cov1 + cov2 - 2 * cross))
    assert frechet_gaussians(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_converges_to_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    n = 200_000
    a = rng.normal(size=(n, 2)) * np.array([1.0, 2.0])
    b = rng.normal(size=(n, 2)) * np.array([3.0, 1.0]) + np.array([1.0, 2.0])
    assert frechet_distance(a, b) == pytest.approx(10.0, abs=0.1)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0.0, abs=1e-9)


def test_frechet_is_finite_for_singular_covariances() -> None:
    x = np.random.default_rng(2).normal(size=(100, 1)) @ np.ones((1, 3))  # rank-1 features
    assert math.isfinite(frechet_distance(x, x + 1.0))
    assert frechet_distance(x, x + 1.0) == pytest.approx(3.0, abs=1e-6)


# ------------------------------------------------------------------------------ OOD


def test_ood_stump_on_a_hand_computed_table() -> None:
    # train scores (log-likelihoods):  in = 5, 6, 7, 2   out = 1, 3, 4
    # sorted: 1o 2i 3o 4o 5i 6i 7i. Weighted Gini n·2p(1−p) per split (left ≤ t):
    #   t=1.5: L{o}=0,           R{i,o,o,i,i,i}: 6·2·(4/6)(2/6)=2.667 → 2.667
    #   t=2.5: L{o,i}=1.0,       R{o,o,i,i,i}:   5·2·(3/5)(2/5)=2.4   → 3.4
    #   t=3.5: L{o,i,o}=1.333,   R{o,i,i,i}:     4·2·(3/4)(1/4)=1.5   → 2.833
    #   t=4.5: L{o,i,o,o}=1.5,   R{i,i,i}=0                          → 1.5   ← best
    #   t=5.5: L 5 rows (2 in)=2.4, R{i,i}=0 → 2.4 ;  t=6.5: 6 rows (3 in)=3.0 → 3.0
    # so threshold 4.5, "in" above it; train accuracy 6/7.
    stump = ood_stump([5, 6, 7, 2], [1, 3, 4])
    assert stump.threshold == 4.5 and stump.in_above and stump.constant is None
    assert stump.train_accuracy == pytest.approx(6 / 7)
    # test: in = 4.6 (✓), 8 (✓), 4.4 (✗);  out = 0 (✓), 4.7 (✗)  →  3/5
    assert ood_accuracy([5, 6, 7, 2], [1, 3, 4], [4.6, 8, 4.4], [0, 4.7]) == pytest.approx(0.6)


def test_ood_stump_learns_the_direction_when_out_scores_higher() -> None:
    # out-of-distribution data with *higher* likelihoods (the classic failure): the stump
    # predicts "in" below its threshold, as the paper's sklearn stump does.
    stump = ood_stump([0, 1, 2], [10, 11, 12])
    assert stump.threshold == 6.0 and not stump.in_above
    assert ood_accuracy([0, 1, 2], [10, 11, 12], [3, -1], [9, 13]) == 1.0
    assert auroc([3, -1], [9, 13]) == 0.0


def test_ood_stump_agrees_with_sklearn_decision_stump() -> None:
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(3)
    for _ in range(50):
        s_in, s_out = rng.normal(1.0, 1.0, 40), rng.normal(-0.5, 1.5, 30)
        t_in, t_out = rng.normal(1.0, 1.0, 25), rng.normal(-0.5, 1.5, 25)
        s_in, s_out, t_in, t_out = (
            v.astype(np.float32).astype(np.float64) for v in (s_in, s_out, t_in, t_out)
        )
        clf = DecisionTreeClassifier(max_depth=1).fit(
            np.r_[s_in, s_out][:, None], np.r_[np.ones(40), np.zeros(30)]
        )
        expected = clf.score(np.r_[t_in, t_out][:, None], np.r_[np.ones(25), np.zeros(25)])
        assert ood_accuracy(s_in, s_out, t_in, t_out) == pytest.approx(expected)


def test_auroc_by_hand() -> None:
    # pairs (in, out): (3,1)✓ (3,2)✓ (3,4)✗ (5,1)✓ (5,2)✓ (5,4)✓ → 5/6
    assert auroc([3, 5], [1, 2, 4]) == pytest.approx(5 / 6)


# --------------------------------------------------------------------- likelihoods


def _tiny_image_model():
    from rfdist import ModelSpec, build_model

    spec = ModelSpec(
        data_shape=(1, 4, 4), latent_dim=3, flow="multiscale", scales=1, couplings=1,
        conv_hidden=4, conv_blocks=1, density_layers=1, density_hidden=(8,),
    )  # fmt: skip
    model = build_model(spec).double()
    with torch.no_grad():  # non-trivial couplings (their output layers start at zero)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_data_and_logit_loglik_differ_by_the_preprocessing_jacobian() -> None:
    model = _tiny_image_model()
    lam = 1e-3
    pixels = torch.randint(0, 256, (3, 1, 4, 4)).double()
    out = log_likelihoods(
        model, pixels, preprocess="logit", lam=lam, generator=torch.Generator().manual_seed(5)
    )
    noise = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    # independent: autograd Jacobian of v ↦ logit(λ + (1−2λ)(v + noise)/256), one image at a time
    def prep(v, u):
        p = lam + (1 - 2 * lam) * (v + u) / 256.0
        return torch.log(p) - torch.log1p(-p)

    for i in range(pixels.shape[0]):
        jac = torch.autograd.functional.jacobian(partial(prep, u=noise[i].flatten()), pixels[i].flatten())
        logdet = torch.linalg.slogdet(jac).logabsdet
        assert float(out["data"][i] - out["model"][i]) == pytest.approx(float(logdet), abs=1e-9)
        z = prep(pixels[i], noise[i]).unsqueeze(0)
        assert float(out["model"][i]) == pytest.approx(float(model.log_prob(z)[0].detach()), abs=1e-9)


def test_standardize_jacobian_is_minus_sum_log_std() -> None:
    stats = {"mean": [1.0, 2.0], "std": [2.0, 0.5]}
    z, logdet = preprocess_rows(torch.tensor([[3.0, 2.5]]), "standardize", (2,), stats=stats)
    assert torch.allclose(z, torch.tensor([[1.0, 1.0]]))
    assert float(logdet[0]) == pytest.approx(-math.log(2.0) - math.log(0.5))


# ----------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """A von Mises model trained for a few steps, logged to a temporary sqlite MLflow store."""
    import mlflow

    from rfdist import ModelSpec, build_model
    from rfdist.core.engine import fit
    from rfdist.data.synthetic import VonMisesCircle
    from rfdist.tracking.models import log_flow_model

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=2, flow_hidden=(8,), density_layers=1,
                     density_hidden=(8,))  # fmt: skip
    model = build_model(spec)
    fit(model, VonMisesCircle().sample(2000), steps=20, batch_size=500, lr=5e-3)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # not a registry another test in this process left set
    mlflow.set_experiment("eval-test")
    with mlflow.start_run() as run:
        mlflow.log_params({"data.synthetic": "von-mises", "data.preprocess": "none"})
        log_flow_model(model, spec, registered_model_name="vm-eval-test")
    return uri, run.info.run_id


def test_cli_eval_logs_metrics_linked_to_the_model_run(logged_model, tmp_path) -> None:
    import mlflow

    from rfdist.cli.main import app

    uri, train_run = logged_model
    data = tmp_path / "vm"
    from rfdist.data.parquet import write_dataset
    from rfdist.data.synthetic import VonMisesCircle

    rows = VonMisesCircle().sample(600, generator=torch.Generator().manual_seed(0)).numpy()
    write_dataset(str(data), {"train": {"x": rows[:300]}, "test": {"x": rows[300:]}})
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app,
        ["eval", "models:/vm-eval-test@latest", "--data", str(data), "--tracking-uri", uri,
         "--json", str(out), "--fd-samples", "300"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    for key in ("test_nll", "test_nll_data", "test_reconstruction", "fd_raw"):
        assert math.isfinite(metrics[key]), key
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(metrics["eval_run_id"])
    assert run.data.tags["rfdist.model_run_id"] == train_run
    assert run.data.metrics["test_nll_data"] == pytest.approx(metrics["test_nll_data"])
    assert "fd_raw" in run.data.metrics


def test_cli_eval_synthetic_data_reports_kl_and_ood(logged_model, tmp_path) -> None:
    from rfdist.cli.main import app

    uri, _ = logged_model
    out = tmp_path / "m.json"
    ood = tmp_path / "ood"
    from rfdist.data.parquet import write_dataset

    gen = np.random.default_rng(0)
    write_dataset(
        str(ood), {s: {"x": gen.normal(0, 0.3, (200, 2)).astype(np.float32)} for s in ("train", "test")}
    )
    result = CliRunner().invoke(
        app,
        ["eval", "models:/vm-eval-test@latest", "--data", "synthetic:von-mises", "--ood-data", str(ood),
         "--max-rows", "200", "--ood-train-rows", "100", "--fd-samples", "200", "--tracking-uri", uri,
         "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert {"kl", "mass", "ood_accuracy", "ood_auroc", "ood_accuracy_reconstruction"} <= set(metrics)
    assert 0.0 <= metrics["ood_accuracy"] <= 1.0


def test_cli_eval_bad_data_path_is_one_error_line(logged_model, tmp_path) -> None:
    from rfdist.cli.main import app

    uri, _ = logged_model
    missing = tmp_path / "no-such-dataset"
    result = CliRunner().invoke(
        app, ["eval", "models:/vm-eval-test@latest", "--data", str(missing), "--tracking-uri", uri]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error:") and str(missing) in lines[0], result.output


def test_lenet_features_are_trained_once_and_cached(tmp_path) -> None:
    from rfdist.eval.features import get_extractor

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (96,), generator=gen)
    images = labels.view(-1, 1, 1, 1).float() * 80 + torch.rand(96, 1, 8, 8, generator=gen) * 40
    first = get_extractor("lenet", train_images=images, train_labels=labels, cache=tmp_path)
    cached = list(tmp_path.glob("lenet-*.pt"))
    assert len(cached) == 1 and not list(tmp_path.glob("*.tmp"))
    again = get_extractor("lenet", train_images=images, train_labels=labels, cache=tmp_path)
    assert first.name == "lenet" and first(images).shape == (96, 84)
    assert np.allclose(first(images), again(images))


def test_inception_features_never_download(tmp_path) -> None:
    from rfdist.eval.features import get_extractor

    with pytest.raises(FileNotFoundError, match="never downloaded"):
        get_extractor(f"inception:{tmp_path / 'missing.pth'}")

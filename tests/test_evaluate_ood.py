"""`rfdist eval`'s OOD scores (model-space likelihood, reconstruction, combined) against independent
computations: brute-force pairwise AUROC and sklearn's depth-1 decision tree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rfdist.eval.metrics import manifold_ood_score, offmanifold_variance


def _pairwise_auroc(s_in: np.ndarray, s_out: np.ndarray) -> float:
    diff = s_in[:, None] - s_out[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def _sklearn_stump_accuracy(tr_in, tr_out, te_in, te_out) -> float:
    from sklearn.tree import DecisionTreeClassifier

    x = np.r_[tr_in, tr_out][:, None]
    clf = DecisionTreeClassifier(max_depth=1).fit(x, np.r_[np.ones(len(tr_in)), np.zeros(len(tr_out))])
    return float(clf.score(np.r_[te_in, te_out][:, None], np.r_[np.ones(len(te_in)), np.zeros(len(te_out))]))


def test_combined_score_by_hand() -> None:
    # reconstruction errors 2 and 4 in D − d = 3 normal directions: σ² = mean/3 = 1
    sigma2 = offmanifold_variance([2.0, 4.0], normal_dim=3)
    assert sigma2 == pytest.approx(1.0)
    np.testing.assert_allclose(manifold_ood_score([0.5, -1.0], [2.0, 4.0], sigma2), [0.5 - 1.0, -1.0 - 2.0])


def test_eval_ood_scores_match_independent_computations() -> None:
    from rfdist import ModelSpec, build_model
    from rfdist.data.synthetic import VonMisesCircle
    from rfdist.recipes.evaluate import EvalData, EvalOptions, evaluate_model

    torch.manual_seed(0)
    spec = ModelSpec(data_shape=(2,), latent_dim=1, flow_layers=2, flow_hidden=(8,), density_layers=1,
                     density_hidden=(8,))  # fmt: skip
    model = build_model(spec).double().eval()
    with torch.no_grad():  # a non-trivial map (output layers start at zero)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(1)
    circle = VonMisesCircle()
    x_in = circle.sample(160, generator=gen, dtype=torch.float64)
    x_out = 1.3 * circle.sample(160, generator=gen, dtype=torch.float64).flip(-1)
    x_out = x_out + 0.3 * torch.randn(x_out.shape, generator=gen, dtype=torch.float64)
    data = EvalData("in", x_in[:80], x_in[80:], None, (2,))
    ood = EvalData("out", x_out[:80], x_out[80:], None, (2,))
    opts = EvalOptions(data="in", ood_train_rows=80, fd_samples=0, plots=False, progress=False)
    metrics = evaluate_model(model, data, opts, ood=ood).metrics

    with torch.no_grad():
        log_p = {k: model.log_prob(v).numpy() for k, v in (("in", x_in), ("out", x_out))}
        recon = {k: (model.project(v) - v).pow(2).sum(-1).numpy() for k, v in (("in", x_in), ("out", x_out))}
    sigma2 = recon["in"][80:].mean() / (2 - 1)  # ML variance on in-distribution TRAIN rows, D − d = 1
    assert metrics["ood_sigma2"] == pytest.approx(sigma2, rel=1e-9)
    scores = {
        "": log_p,  # D=2 vectors: the model's space is the data space
        "_reconstruction": {k: -v for k, v in recon.items()},
        "_combined": {k: log_p[k] - recon[k] / (2 * sigma2) for k in log_p},
    }
    for suffix, s in scores.items():
        te_in, te_out, tr_in, tr_out = s["in"][:80], s["out"][:80], s["in"][80:], s["out"][80:]
        assert metrics[f"ood_auroc{suffix}"] == pytest.approx(_pairwise_auroc(te_in, te_out), abs=1e-12)
        expected = _sklearn_stump_accuracy(tr_in, tr_out, te_in, te_out)
        assert metrics[f"ood_accuracy{suffix}"] == pytest.approx(expected), suffix
    # the combined score is its own number, not a copy of either part
    assert metrics["ood_auroc_combined"] not in (metrics["ood_auroc"], metrics["ood_auroc_reconstruction"])


def test_combined_score_on_images_uses_the_model_space() -> None:
    # logit-space images: the combined score takes the model-space log-density (not the data-space
    # one, which adds the logit Jacobian) and σ² over the D − d = 16 − 3 normal directions
    from rfdist import ModelSpec, build_model
    from rfdist.recipes.evaluate import EvalData, EvalOptions, evaluate_model

    torch.manual_seed(0)
    spec = ModelSpec(
        data_shape=(1, 4, 4), latent_dim=3, flow="multiscale", scales=1, couplings=1,
        conv_hidden=4, conv_blocks=1, density_layers=1, density_hidden=(8,),
    )  # fmt: skip
    model = build_model(spec).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(2)
    bright = torch.randint(60, 256, (120, 1, 4, 4), generator=gen).double()
    dark = torch.randint(0, 120, (120, 1, 4, 4), generator=gen).double()
    data = EvalData("in", bright[:60], bright[60:], None, (1, 4, 4))
    ood = EvalData("out", dark[:60], dark[60:], None, (1, 4, 4))
    opts = EvalOptions(data="in", ood_train_rows=60, fd_samples=0, plots=False, progress=False)
    result = evaluate_model(model.eval(), data, opts, preprocess="logit", ood=ood)
    m, s = result.metrics, result.scores

    sigma2 = s["train_in_reconstruction"].mean() / (16 - 3)
    assert m["ood_sigma2"] == pytest.approx(sigma2, rel=1e-12)
    score = {k: s[f"{k}_model"] - s[f"{k}_reconstruction"] / (2 * sigma2) for k in ("test", "test_out")}
    assert m["ood_auroc_combined"] == pytest.approx(_pairwise_auroc(score["test"], score["test_out"]))
    in_data = {k: s[f"{k}_data"] - s[f"{k}_reconstruction"] / (2 * sigma2) for k in ("test", "test_out")}
    assert _pairwise_auroc(in_data["test"], in_data["test_out"]) != pytest.approx(m["ood_auroc_combined"])

"""Evaluation metrics for a trained flow: pure functions, no Ray or MLflow.

- :func:`frechet_distance` — Fréchet distance between Gaussian fits of two feature sets.
- :func:`ood_stump` / :func:`ood_accuracy` — the paper's OOD accuracy: one likelihood threshold
  (a depth-1 decision stump) fit on train-split scores of in/out data, accuracy on test splits.
- :func:`auroc` — area under the ROC curve of in- vs out-of-distribution scores.
- :func:`offmanifold_variance` / :func:`manifold_ood_score` — the injective-flow OOD score that
  combines the on-manifold density with the distance to the manifold.
- :func:`preprocess_rows` / :func:`log_likelihoods` — exact log-likelihood in the model's
  space (e.g. logit space for images) and in data space (pixel values in ``[0, 256)``), which
  differ by exactly the preprocessing's ``log|det ∂z/∂x|``.
- :func:`reconstruction_errors` — ``‖z − g(g†(z))‖²`` per row, in the model's space.
- :func:`circle_metrics` — a flow's density on the unit circle against the true von Mises one:
  KL(true ‖ model) and the model's mass by quadrature over the circle.
- :func:`sphere_density_grid` / :func:`sphere_metrics` — a density on the unit sphere ``S²``
  against the known true one: KL(true ‖ model) and the model's mass by quadrature over the sphere.
- :func:`encode_rows` / :func:`factor_r2` — is the manifold learned? R² of predicting a
  synthetic set's true factors from the encodings ``g†(x)`` (linear and k-NN regression fit on
  train rows, scored on test rows).

Example:
    >>> import numpy as np
    >>> a = np.random.default_rng(0).normal(size=(2000, 2))
    >>> round(frechet_distance(a, a + 1.0), 1)   # ‖Δμ‖² = 2, same covariance
    2.0
    >>> ood_accuracy([3, 4, 5], [0, 1, 2], [4, 6], [1, -1])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rfdist.data.preprocess import dequantize_logit, standardize

__all__ = [
    "Stump",
    "auroc",
    "circle_metrics",
    "encode_rows",
    "factor_r2",
    "frechet_distance",
    "gaussian_fit",
    "latent_scale",
    "log_likelihoods",
    "manifold_ood_score",
    "offmanifold_variance",
    "ood_accuracy",
    "ood_stump",
    "preprocess_rows",
    "reconstruction_errors",
    "sphere_density_grid",
    "sphere_grid_metrics",
    "sphere_metrics",
]

ArrayLike = np.ndarray | Tensor | Sequence[float]


def _numpy(values: ArrayLike, *, ndim: int) -> np.ndarray:
    array = values.detach().cpu().double().numpy() if isinstance(values, Tensor) else np.asarray(values)
    array = np.asarray(array, dtype=np.float64)
    if ndim == 1:
        array = array.reshape(-1)
    elif array.ndim == 1:
        array = array[:, None]
    elif array.ndim > 2:
        array = array.reshape(array.shape[0], -1)
    return array


# --------------------------------------------------------------------- Fréchet distance
def gaussian_fit(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and unbiased covariance ``(F, F)`` of ``(N, F)`` features (float64)."""
    x = _numpy(features, ndim=2)
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 rows to fit a Gaussian, got {x.shape[0]}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_gaussians(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    :math:`\|\mu_1-\mu_2\|^2 + \mathrm{tr}\,C_1 + \mathrm{tr}\,C_2 - 2\,\mathrm{tr}(C_1^{1/2} C_2 C_1^{1/2})^{1/2}`.
    The cross term uses symmetric eigen-decompositions (``C_1^{1/2}``, then the PSD matrix
    ``C_1^{1/2} C_2 C_1^{1/2}``), which equals ``tr sqrtm(C_1 C_2)`` for PSD inputs, is real by
    construction and stays stable for singular covariances (negative round-off eigenvalues are
    clipped to 0), where ``scipy.linalg.sqrtm`` of the non-symmetric product can return complex
    noise.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    cov1, cov2 = np.atleast_2d(cov1), np.atleast_2d(cov2)
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape} vs {mu2.shape}")
    root1 = _psd_sqrt(cov1)
    cross = root1 @ cov2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_sqrt)


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance (as in FID: the *squared* 2-Wasserstein distance) of Gaussian fits.

    Arguments:
        features_a, features_b: ``(N, F)`` and ``(M, F)`` arrays or tensors (raw vectors, or
            features from :mod:`rfdist.eval.features`).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(1).normal(size=(500, 3))
        >>> abs(frechet_distance(x, x)) < 1e-9
        True
    """
    mu1, cov1 = gaussian_fit(features_a)
    mu2, cov2 = gaussian_fit(features_b)
    return frechet_gaussians(mu1, cov1, mu2, cov2)


# --------------------------------------------------------------------------------- OOD
@dataclass(frozen=True)
class Stump:
    """A fitted depth-1 decision stump on one score.

    ``predict(s)`` is ``in_above`` for ``s > threshold`` and ``not in_above`` otherwise when the
    two leaves disagree; ``constant`` holds the single class when both leaves predict the same.
    """

    threshold: float
    in_above: bool
    train_accuracy: float
    constant: bool | None = None

    def predict_in(self, scores: ArrayLike) -> np.ndarray:
        """Boolean array: ``True`` where a score is classified in-distribution."""
        s = _numpy(scores, ndim=1).astype(np.float32)  # as sklearn's tree compares its thresholds
        if self.constant is not None:
            return np.full(s.shape, self.constant)
        above = s > self.threshold
        return above if self.in_above else ~above


def ood_stump(
    train_in: ArrayLike,
    train_out: ArrayLike,
    *,
    criterion: Literal["gini", "entropy", "log_loss"] = "gini",
) -> Stump:
    """Fit the single likelihood threshold separating in- from out-of-distribution scores.

    The paper's classifier itself: ``sklearn.tree.DecisionTreeClassifier(max_depth=1)`` on the
    log-likelihoods (in = 1, out = 0). Candidate thresholds are midpoints between consecutive
    distinct scores, a score ``<= threshold`` goes left, each leaf predicts its majority class
    (a tie: out), and the split minimises ``criterion``'s impurity. The *direction* is therefore
    learned: if out-of-distribution data get higher likelihoods, the stump predicts "in" below
    the threshold (``in_above=False``).
    """
    from sklearn.tree import DecisionTreeClassifier

    s_in, s_out = _numpy(train_in, ndim=1), _numpy(train_out, ndim=1)
    if s_in.size == 0 or s_out.size == 0:
        raise ValueError("ood_stump needs scores of both in- and out-of-distribution data")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("ood_stump: scores must be finite")
    scores = np.concatenate([s_in, s_out])[:, None]
    is_in = np.concatenate([np.ones(s_in.size), np.zeros(s_out.size)])
    clf = DecisionTreeClassifier(max_depth=1, criterion=criterion, random_state=0).fit(scores, is_in)
    acc = float(clf.score(scores, is_in))
    tree = clf.tree_
    if tree.node_count == 1:  # all scores equal (or one class wins everywhere): one leaf
        return Stump(float(scores[0, 0]), True, acc, constant=bool(clf.classes_[tree.value[0, 0].argmax()]))
    left, right = tree.children_left[0], tree.children_right[0]
    left_in, right_in = (bool(clf.classes_[tree.value[node, 0].argmax()]) for node in (left, right))
    threshold = float(tree.threshold[0])
    if left_in == right_in:
        return Stump(threshold, True, acc, constant=left_in)
    return Stump(threshold, right_in, acc)


def ood_accuracy(
    train_in: ArrayLike,
    train_out: ArrayLike,
    test_in: ArrayLike,
    test_out: ArrayLike,
    *,
    criterion: Literal["gini", "entropy", "log_loss"] = "gini",
) -> float:
    """OOD accuracy as in the paper: a stump fit on train-split scores, scored on test splits.

    Scores are log-likelihoods (higher = more in-distribution); the stump may still learn the
    opposite direction (see :func:`ood_stump`). The accuracy is over all test rows together
    (``test_in`` labelled in, ``test_out`` labelled out).

    Example:
        >>> ood_accuracy([5.0, 6.0], [1.0, 2.0], [4.0, 7.0, 0.0], [0.5])
        0.75
    """
    stump = ood_stump(train_in, train_out, criterion=criterion)
    t_in, t_out = _numpy(test_in, ndim=1), _numpy(test_out, ndim=1)
    correct = stump.predict_in(t_in).sum() + (~stump.predict_in(t_out)).sum()
    return float(correct / (t_in.size + t_out.size))


def auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """P(score_in > score_out) + ½P(tie): AUROC with "higher score = in-distribution".

    Below 0.5 means the model ranks out-of-distribution data *higher*.
    """
    from sklearn.metrics import roc_auc_score

    s_in, s_out = _numpy(scores_in, ndim=1), _numpy(scores_out, ndim=1)
    labels = np.concatenate([np.ones(s_in.size), np.zeros(s_out.size)])
    return float(roc_auc_score(labels, np.concatenate([s_in, s_out])))


def offmanifold_variance(reconstruction: ArrayLike, normal_dim: int) -> float:
    """σ² of isotropic Gaussian noise off the manifold, by maximum likelihood on in-distribution rows.

    ``reconstruction`` holds ``‖z − g(g†(z))‖²`` per row; the residual lives in the ``D − d``
    normal directions, so the ML estimate is their mean divided by ``normal_dim = D − d``.
    """
    r = _numpy(reconstruction, ndim=1)
    if r.size == 0 or normal_dim < 1:
        raise ValueError("offmanifold_variance needs reconstruction errors and normal_dim >= 1")
    return float(max(r.mean() / normal_dim, np.finfo(np.float64).tiny))


def manifold_ood_score(log_prob: ArrayLike, reconstruction: ArrayLike, sigma2: float) -> np.ndarray:
    r"""The combined injective-flow score :math:`\log p(x) - \|z - g(g^\dagger(z))\|^2 / (2\sigma^2)`.

    ``log_prob`` is the model's on-manifold log-density (of the projection g(g†(z)), in the model's
    space) and the second term the log of an isotropic Gaussian ``N(0, σ² I)`` in the ``D − d``
    normal directions: together the log-density of the "noisy manifold" model of injective flows
    (Cunningham et al., "Normalizing Flows Across Dimensions", 2020; Brehmer & Cranmer, "Flows for
    simultaneous manifold learning and density estimation", NeurIPS 2020, score OOD data by both
    the on-manifold likelihood and the reconstruction error). The constant
    ``−(D − d)/2 · log(2πσ²)`` is dropped: it moves every score equally, so neither the stump's
    accuracy nor the AUROC changes. ``sigma2`` comes from :func:`offmanifold_variance` on
    in-distribution *train* rows, so nothing is fit on the test rows. Higher = more in-distribution.

    Example:
        >>> manifold_ood_score([1.0, 1.0], [0.0, 2.0], sigma2=0.5).tolist()
        [1.0, -1.0]
    """
    lp, r = _numpy(log_prob, ndim=1), _numpy(reconstruction, ndim=1)
    return lp - r / (2.0 * sigma2)


# --------------------------------------------------------------------- likelihoods
def preprocess_rows(
    x: Tensor,
    kind: str,
    shape: Sequence[int],
    *,
    lam: float = 1e-6,
    stats: dict | None = None,
    noise: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Data rows → model input, with ``log|det ∂z/∂x|`` per row (0 for ``none``).

    ``kind``: ``none``, ``logit`` (pixels ``[0, 256)`` + ``noise`` (uniform dequantisation, given
    explicitly so results are reproducible) then logit) or ``standardize``.
    """
    x = x.reshape(x.shape[0], *shape)
    if kind == "none":
        return x, x.new_zeros(x.shape[0])
    if kind == "logit":
        if noise is None:
            noise = torch.zeros_like(x)
        return dequantize_logit(x + noise.reshape(x.shape), lam=lam, dequantize=False)
    if kind == "standardize":
        if not stats:
            raise ValueError("preprocess=standardize needs the dataset's feature statistics")
        z = standardize(x.reshape(x.shape[0], -1), stats).reshape(x.shape)
        std = torch.as_tensor(stats["std"], dtype=torch.float64)
        return z, x.new_full((x.shape[0],), float(-torch.log(std).sum()))
    raise ValueError(f"unknown preprocessing {kind!r}")


@torch.no_grad()
def log_likelihoods(
    model,
    x: Tensor,
    *,
    preprocess: str = "none",
    lam: float = 1e-6,
    stats: dict | None = None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: str | None = None,
) -> dict[str, Tensor]:
    """Exact per-row log-likelihoods of data rows ``x`` (float64 tensors of shape ``(N,)``).

    Returns ``{"model": log p in the model's input space (logit space for images),
    "data": log p in data space (= model + log|det ∂z/∂x|), "logdet": that term,
    "reconstruction": ‖z − g(g†(z))‖² in the model's space}``. Dequantisation noise comes from
    ``generator`` (seeded by the caller) so a re-run scores the same points.
    """
    shape = model.data_shape
    dtype = next(model.parameters()).dtype
    out: dict[str, list[Tensor]] = {"model": [], "data": [], "logdet": [], "reconstruction": []}
    starts = range(0, x.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", leave=False)
    for start in starts:
        rows = x[start : start + batch_size].to(dtype)
        noise = torch.rand(rows.shape, generator=generator, dtype=dtype) if preprocess == "logit" else None
        z, logdet = preprocess_rows(rows, preprocess, shape, lam=lam, stats=stats, noise=noise)
        log_model = model.log_prob(z).double()
        out["model"].append(log_model)
        out["logdet"].append(logdet.double())
        out["data"].append(log_model + logdet.double())
        out["reconstruction"].append((model.project(z) - z).flatten(1).pow(2).sum(-1).double())
    return {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for k, v in out.items()}


@torch.no_grad()
def reconstruction_errors(model, z: Tensor, *, batch_size: int = 512) -> Tensor:
    """``‖z − g(g†(z))‖²`` per row (the model's space), float64 ``(N,)``."""
    parts = [
        (model.project(z[i : i + batch_size]) - z[i : i + batch_size]).flatten(1).pow(2).sum(-1).double()
        for i in range(0, z.shape[0], batch_size)
    ]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------- learned manifold vs truth
@torch.no_grad()
def encode_rows(
    model,
    x: Tensor,
    *,
    preprocess: str = "none",
    lam: float = 1e-6,
    stats: dict | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Encodings ``g†(z)`` ``(N, d)`` of data rows (images dequantised at the pixel centre)."""
    dtype = next(model.parameters()).dtype
    parts = []
    for start in range(0, x.shape[0], batch_size):
        rows = x[start : start + batch_size].to(dtype)
        noise = torch.full_like(rows, 0.5) if preprocess == "logit" else None
        z, _ = preprocess_rows(rows, preprocess, model.data_shape, lam=lam, stats=stats, noise=noise)
        parts.append(model.encode(z).double().cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros((0, model.latent_dim))


def latent_scale(codes: Tensor, flow_input: Tensor, *, bound: float) -> dict[str, float]:
    """How the latents sit against the latent density's range.

    ``latent_rms``: the median over coordinates of each coordinate's root mean square (about 0)
    of the encodings ``codes`` ``(N, d)``; ``latent_rms_flow`` the same of what the density's
    flow sees (``flow_input``: the codes after its standardising layer, if any);
    ``latent_beyond_range``: the share of those flow inputs outside ``[-bound, bound]`` (for an
    NSF density, where its splines cannot shape the density).

    Example:
        >>> latent_scale(torch.full((4, 2), 10.0), torch.full((4, 2), 1.0), bound=5.0)
        {'latent_rms': 10.0, 'latent_rms_flow': 1.0, 'latent_beyond_range': 0.0}
    """

    def rms(x: Tensor) -> float:
        return float(x.double().pow(2).mean(0).sqrt().median())

    beyond = float((flow_input.abs() > bound).double().mean())
    return {"latent_rms": rms(codes), "latent_rms_flow": rms(flow_input), "latent_beyond_range": beyond}


def factor_r2(
    train_codes: ArrayLike,
    train_factors: ArrayLike,
    test_codes: ArrayLike,
    test_factors: ArrayLike,
    *,
    names: Sequence[str] | None = None,
    neighbours: int = 10,
) -> dict[str, float]:
    """R² on test rows of regressions from codes to true factors, fit on train rows.

    ``factor_r2_linear`` (least squares) and ``factor_r2_knn`` (k-NN on standardised codes,
    which also credits a nonlinear but one-to-one encoding) are averaged uniformly over the
    factors; ``factor_r2_knn_<name>`` per factor. 1 = the factor is read off the codes exactly,
    0 = no better than its mean.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> f = rng.uniform(size=(400, 2)); codes = np.c_[f @ [[1, 2], [3, -1]], rng.normal(size=400)]
        >>> round(factor_r2(codes[:300], f[:300], codes[300:], f[300:])["factor_r2_linear"], 3)
        1.0
    """
    from sklearn.linear_model import LinearRegression
    from sklearn.metrics import r2_score
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.preprocessing import StandardScaler

    a, fa = _numpy(train_codes, ndim=2), _numpy(train_factors, ndim=2)
    b, fb = _numpy(test_codes, ndim=2), _numpy(test_factors, ndim=2)
    scaler = StandardScaler().fit(a)
    linear = LinearRegression().fit(a, fa).predict(b)
    knn = KNeighborsRegressor(n_neighbors=min(neighbours, len(a))).fit(scaler.transform(a), fa)
    near = knn.predict(scaler.transform(b))
    out = {
        "factor_r2_linear": float(r2_score(fb, linear)),
        "factor_r2_knn": float(r2_score(fb, near)),
    }
    for i, name in enumerate(names or [str(i) for i in range(fa.shape[1])]):
        out[f"factor_r2_knn_{name}"] = float(r2_score(fb[:, i], near[:, i]))
    return out


# ------------------------------------------------------------- density on a known manifold
def circle_metrics(model: torch.nn.Module, truth, points: int = 4000) -> dict[str, float]:
    """KL(true ‖ model) and ∫p dθ by quadrature over the true circle (von Mises only).

    ``model`` has ``log_prob`` (a flow); ``truth`` has ``points`` and ``log_density_theta``
    (:mod:`rfdist.data.synthetic`).
    """
    theta, x = truth.points(points, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        log_model = model.log_prob(x).double()
    log_true = truth.log_density_theta(theta)
    weight = 2 * math.pi / points
    return {
        "kl": float((log_true.exp() * (log_true - log_model)).sum() * weight),
        "mass": float(log_model.exp().sum() * weight),
    }


# --------------------------------------------------------------------- density on the sphere
def sphere_density_grid(
    log_prob: Callable[[Tensor], Tensor],
    truth,
    *,
    n_polar: int = 200,
    n_azimuth: int = 400,
    batch_size: int = 10_000,
) -> dict[str, np.ndarray]:
    """Model and true log-densities (w.r.t. area) on an equal-area grid of the unit sphere.

    Cells are midpoints of a uniform grid in ``z = cos(polar angle)`` (``n_polar`` rows over
    ``[-1, 1]``) × azimuth ``φ`` (``n_azimuth`` columns over ``[-π, π)``); by Archimedes' theorem
    every cell has area ``4π / (n_polar · n_azimuth)``. Returns ``z`` ``(P,)``, ``phi`` ``(A,)``,
    ``points`` ``(P·A, 3)`` (float64) and ``log_model`` / ``log_true`` ``(P, A)``.
    ``log_prob`` maps ``(B, 3)`` float64 points to ``(B,)`` log-densities (e.g. a flow's
    ``log_prob`` under ``torch.no_grad``); ``truth`` has ``log_density`` (:mod:`rfdist.data.synthetic`).
    """
    z = -1.0 + (np.arange(n_polar) + 0.5) * 2.0 / n_polar
    phi = -math.pi + (np.arange(n_azimuth) + 0.5) * 2.0 * math.pi / n_azimuth
    zz, pp = np.meshgrid(z, phi, indexing="ij")
    rr = np.sqrt(np.clip(1.0 - zz**2, 0.0, None))
    points = torch.as_tensor(np.stack([rr * np.cos(pp), rr * np.sin(pp), zz], axis=-1).reshape(-1, 3))
    with torch.no_grad():
        log_model = torch.cat(
            [log_prob(points[i : i + batch_size]).double() for i in range(0, len(points), batch_size)]
        )
        log_true = truth.log_density(points).double()
    shape = (n_polar, n_azimuth)
    return {
        "z": z,
        "phi": phi,
        "points": points.numpy(),
        "log_model": log_model.cpu().numpy().reshape(shape),
        "log_true": log_true.cpu().numpy().reshape(shape),
    }


def sphere_metrics(
    log_prob: Callable[[Tensor], Tensor], truth, *, n_polar: int = 200, n_azimuth: int = 400
) -> dict[str, float]:
    """KL(true ‖ model) and the model's mass ∫ p dA by quadrature over the true sphere ``S²``.

    The sphere counterpart of the circle's ``kl`` / ``mass``: ``kl = Σ_cells ΔA · p(x)(log p(x) −
    log q(x))`` on :func:`sphere_density_grid` (midpoint rule, error O(1/n²) for smooth
    densities); ``mass`` is 1 for a model whose density lives on the true sphere. A learned
    surface inside the sphere concentrates the density (mass > 1, and ``kl`` can go negative);
    one outside it, or density outside the chart, shows as mass < 1. ``kl_normalized =
    kl + log(mass)`` is the KL to the model's density renormalised on the true sphere (≥ 0):
    the error in the density's *shape*, with the surface's scale factored out.

    Example:
        >>> from rfdist.data.synthetic import SphereVMFMixture
        >>> truth = SphereVMFMixture()
        >>> m = sphere_metrics(truth.log_density, truth)
        >>> abs(m["kl"]) < 1e-9, round(m["mass"], 4), abs(m["kl_normalized"]) < 1e-4
        (True, 1.0, True)
    """
    return sphere_grid_metrics(sphere_density_grid(log_prob, truth, n_polar=n_polar, n_azimuth=n_azimuth))


def sphere_grid_metrics(grid: dict[str, np.ndarray]) -> dict[str, float]:
    """``kl`` and ``mass`` (see :func:`sphere_metrics`) from a :func:`sphere_density_grid`."""
    area = 4.0 * math.pi / grid["log_true"].size
    log_true, log_model = grid["log_true"], grid["log_model"]
    kl = float((np.exp(log_true) * (log_true - log_model)).sum() * area)
    mass = float(np.exp(log_model).sum() * area)
    return {"kl": kl, "mass": mass, "kl_normalized": kl + math.log(mass)}

"""``rfdist eval``: evaluate a logged flow on a dataset and record the results in MLflow.

Loads the model by URI (:func:`rfdist.tracking.models.load_model`), reads the evaluation data with
:mod:`rfdist.data.reader` (or generates a synthetic set: ``synthetic:von-mises``), computes the
metrics of :mod:`rfdist.eval.metrics`, and logs them to a new MLflow run tagged
``rfdist.model_run_id`` (and nested under the model's training run when it is known).

Metric names say their likelihood space. Log-likelihoods are nats per example (the sum over
dimensions); ``test_bpd_data`` is bits per dimension in data space:

- ``test_nll_data``: data space (pixel values in ``[0, 256)`` for images, including the
  dequantisation + logit Jacobian; the raw rows for vectors);
- ``test_nll_logit`` (images, the space the paper's models are trained in) /
  ``test_nll_standardized``: the model's own input space;
- ``test_reconstruction``: ``‖z − g(g†(z))‖²`` per example in the model's space;
- ``fd_<features>``: Fréchet distance between model samples and test rows (``raw``,
  ``lenet``, ``inception``);
- ``ood_accuracy_<score>`` / ``ood_auroc_<score>`` with ``--ood-data``: score ``data``,
  ``logit`` (log-likelihoods), ``reconstruction`` (its negative) or ``combined`` (the model-space
  on-manifold log-density minus the reconstruction error over 2σ², σ² fit on the in-distribution
  train rows, ``ood_sigma2``: :func:`rfdist.eval.metrics.manifold_ood_score`); the accuracy is the
  paper's depth-1 stump fit on train rows, both scored on test rows;
- ``factor_r2_linear`` / ``factor_r2_knn`` (+ ``factor_r2_knn_<name>``) when the dataset has
  true factor columns ``factor_*`` (``shapes64``): R² on the test rows of regressions from the
  encodings g†(x) to the factors, fit on up to 2,000 train rows.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rfdist.eval.metrics import (
    auroc,
    circle_metrics,
    encode_rows,
    factor_r2,
    frechet_distance,
    latent_scale,
    log_likelihoods,
    manifold_ood_score,
    offmanifold_variance,
    ood_stump,
    sphere_density_grid,
    sphere_grid_metrics,
)

__all__ = ["EvalData", "EvalOptions", "EvalResult", "evaluate_model", "load_eval_data", "run_eval"]

SPACE_NAMES = {"logit": "logit", "standardize": "standardized"}


@dataclass
class EvalOptions:
    """What ``rfdist eval`` computes (the CLI flags, one to one)."""

    data: str
    ood_data: str | None = None
    max_rows: int | None = None  # rows of the test split scored (default: all)
    ood_train_rows: int = 1000  # train-split rows per dataset for fitting the OOD threshold
    features: str = "auto"  # raw | lenet | inception:PATH | auto (raw for vectors, lenet for images)
    fd_samples: int = 5000  # 0 = no Fréchet distance
    preprocess: str | None = None  # default: the model's training run, else by data shape
    logit_lambda: float | None = None
    batch_size: int = 256
    seed: int = 0
    plots: bool = True
    progress: bool = True


@dataclass
class EvalData:
    """Evaluation rows in data space (float32), with labels and the known truth if synthetic."""

    uri: str
    test: torch.Tensor
    train: torch.Tensor | None
    train_labels: torch.Tensor | None
    shape: tuple[int, ...]
    stats: dict | None = None
    truth: Any = None
    synthetic: str | None = None
    factor_names: list[str] = field(default_factory=list)  # true factor columns (factor_*)
    test_factors: np.ndarray | None = None
    train_factors: np.ndarray | None = None


@dataclass
class EvalResult:
    """Metrics (floats), per-row scores, and the plot files written."""

    metrics: dict[str, float]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)


def load_eval_data(uri: str, *, test_rows: int | None = None, seed: int = 0) -> EvalData:
    """Open ``uri`` (a Parquet dataset, or ``synthetic:NAME``); raises ``DataError`` clearly."""
    from rfdist.data.errors import DataError

    if uri.startswith("synthetic:"):
        from rfdist.data.synthetic import make_synthetic

        name = uri.split(":", 1)[1]
        try:
            source = make_synthetic(name)
        except ValueError as exc:
            raise DataError(f"--data {uri}: {exc}") from None
        rows = test_rows or 5000
        test = source.sample(rows, generator=torch.Generator().manual_seed(10_000 + seed))
        train = source.sample(rows, generator=torch.Generator().manual_seed(20_000 + seed))
        return EvalData(uri, test, train, None, (source.data_dim,), truth=source, synthetic=name)
    from rfdist.data.reader import load_split, open_dataset

    info = open_dataset(uri)
    split = "test" if "test" in info.splits else "val" if "val" in info.splits else None
    if split is None:
        raise DataError(f"{uri}: no 'test' or 'val' split to evaluate on (found {sorted(info.splits)})")
    test = load_split(info, split)
    if test_rows is not None:
        test = test[:test_rows]
    train, labels = load_split(info, "train", labels=True) if "train" in info.splits else (None, None)
    data = EvalData(uri, test, train, labels, tuple(info.shape), stats=info.stats)
    if train is not None:
        names, data.test_factors = _factor_columns(info, split)
        if names:
            data.factor_names = names
            data.test_factors = data.test_factors[: test.shape[0]]
            data.train_factors = _factor_columns(info, "train")[1]
    return data


def _factor_columns(info, split: str) -> tuple[list[str], np.ndarray | None]:
    """The ``factor_*`` columns of ``split`` (a synthetic set's true factors) as ``(N, k)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = info.splits[split]
    names = [n for n in pq.read_schema(paths[0], filesystem=info.filesystem).names if n.startswith("factor_")]
    if not names:
        return [], None
    table = pa.concat_tables(pq.read_table(p, filesystem=info.filesystem, columns=names) for p in paths)
    return names, np.stack([np.asarray(table.column(n), dtype=np.float64) for n in names], axis=1)


def _subset(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:n]]


def _to_data_space(z: torch.Tensor, preprocess: str, lam: float, stats: dict | None) -> torch.Tensor:
    """Model-space rows (e.g. samples) back to data space (pixels for images)."""
    from rfdist.data.preprocess import logit_inverse

    if preprocess == "logit":
        return logit_inverse(z, lam=lam)
    if preprocess == "standardize" and stats:
        flat = z.reshape(z.shape[0], -1)
        mean = torch.as_tensor(stats["mean"], dtype=z.dtype)
        std = torch.as_tensor(stats["std"], dtype=z.dtype)
        return (flat * std + mean).reshape(z.shape)
    return z


def _test_metrics(test: dict[str, torch.Tensor], n_test: int, dim: int, preprocess: str) -> dict[str, float]:
    """Test NLL (data space, and the model's space when it differs), bits/dim, reconstruction."""
    space = SPACE_NAMES.get(preprocess)
    metrics: dict[str, float] = {"n_test": float(n_test)}
    metrics["test_nll_data"] = float(-test["data"].mean())
    if space is None:
        metrics["test_nll"] = metrics["test_nll_data"]
    else:
        metrics[f"test_nll_{space}"] = float(-test["model"].mean())
    if preprocess == "logit":
        metrics["test_bpd_data"] = metrics["test_nll_data"] / (dim * math.log(2))
    metrics["test_reconstruction"] = float(test["reconstruction"].mean())
    return metrics


def _samples(model, data: EvalData, opts: EvalOptions, preprocess: str, lam: float):
    """``(samples in the model's space, in data space, Fréchet-distance metrics)``, seeded by ``opts.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        n_fd = min(opts.fd_samples, data.test.shape[0])  # 0: no Fréchet distance (64 samples drawn)
        n_draw = n_fd or 64
        samples = torch.cat([model.sample(min(500, n_draw - i)) for i in range(0, n_draw, 500)])
    samples_data = _to_data_space(samples, preprocess, lam, data.stats).float()
    features = opts.features
    if features == "auto":
        features = "lenet" if len(model.data_shape) == 3 and data.train_labels is not None else "raw"
    from rfdist.eval.features import get_extractor

    metrics: dict[str, float] = {}
    if n_fd:  # raw features at D=12,288 mean a 12,288² covariance: use --fd-samples 0 there
        extractor = get_extractor(
            features, train_images=data.train, train_labels=data.train_labels, progress=opts.progress
        )
        metrics[f"fd_{extractor.name}"] = frechet_distance(
            extractor(samples_data), extractor(data.test[:n_fd])
        )
    return samples, samples_data, metrics


def _truth_metrics(
    model, data: EvalData, samples: torch.Tensor, nll_data: float, scores: dict
) -> dict[str, float]:
    """Synthetic data with a known density: entropy, KL, distance of samples to the true manifold.

    The sphere's quadrature grid goes into ``scores`` (``sphere_*``) for its plot.
    """
    metrics = {"true_entropy": float(data.truth.entropy())}
    metrics["sample_off_manifold"] = float((samples.norm(dim=-1) - 1).abs().mean())
    metrics["kl_mc"] = nll_data - metrics["true_entropy"]
    if data.synthetic == "von-mises":
        metrics.update(circle_metrics(model, data.truth))
    elif data.synthetic == "sphere":  # KL(true ‖ model), mass: quadrature over the true sphere
        grid = _sphere_grid(model, data.truth)
        metrics.update(sphere_grid_metrics(grid))
        scores.update({f"sphere_{k}": v for k, v in grid.items() if k != "points"})
    return metrics


def _latent_metrics(model, data: EvalData, opts: EvalOptions, preprocess: str, lam: float) -> dict[str, float]:
    """The test encodings' scale against the latent density's range (:func:`latent_scale`)."""
    from rfdist.core.density import SPLINE_RANGE

    codes = encode_rows(
        model, data.test, preprocess=preprocess, lam=lam, stats=data.stats, batch_size=opts.batch_size
    )
    codes = torch.from_numpy(codes).to(next(model.parameters()).dtype)
    with torch.no_grad():
        return latent_scale(codes, model.density.flow_input(codes), bound=SPLINE_RANGE)


def _factor_metrics(
    model, data: EvalData, opts: EvalOptions, preprocess: str, lam: float
) -> dict[str, float]:
    """R² of the true factors from the encodings (is the manifold learned?)."""
    rows = min(2000, data.train.shape[0])  # the first rows: factors stay aligned with images
    codes = {
        name: encode_rows(model, x, preprocess=preprocess, lam=lam, stats=data.stats, batch_size=opts.batch_size)
        for name, x in (("train", data.train[:rows]), ("test", data.test))
    }  # fmt: skip
    names = [n.removeprefix("factor_") for n in data.factor_names]
    return factor_r2(codes["train"], data.train_factors[:rows], codes["test"], data.test_factors, names=names)


def evaluate_model(
    model,
    data: EvalData,
    opts: EvalOptions,
    *,
    preprocess: str = "none",
    lam: float = 1e-6,
    ood: EvalData | None = None,
    plot_dir: Path | None = None,
) -> EvalResult:
    """All metrics of ``model`` on ``data`` (and OOD against ``ood``); see the module docstring."""
    start = time.perf_counter()
    model = model.eval()
    if tuple(data.shape) != tuple(model.data_shape):
        from rfdist.data.errors import DataError

        raise DataError(f"{data.uri}: rows have shape {data.shape}, the model expects {model.data_shape}")
    bar = opts.progress

    def score(x: torch.Tensor, what: str, seed: int) -> dict[str, torch.Tensor]:
        return log_likelihoods(
            model, x, preprocess=preprocess, lam=lam, stats=data.stats, batch_size=opts.batch_size,
            generator=torch.Generator().manual_seed(seed), progress=f"log-likelihood {what}" if bar else None,
        )  # fmt: skip

    test = score(data.test, "test", opts.seed)
    metrics = _test_metrics(test, data.test.shape[0], math.prod(model.data_shape), preprocess)
    scores = {f"test_{k}": v.numpy() for k, v in test.items()}
    samples, samples_data, fd = _samples(model, data, opts, preprocess, lam)
    metrics.update(fd)
    metrics.update(_latent_metrics(model, data, opts, preprocess, lam))
    if data.truth is not None:
        metrics.update(_truth_metrics(model, data, samples, metrics["test_nll_data"], scores))
    if data.test_factors is not None and data.train is not None:
        metrics.update(_factor_metrics(model, data, opts, preprocess, lam))
    if ood is not None:
        space = SPACE_NAMES.get(preprocess)
        metrics.update(_ood_metrics(model, data, ood, opts, test, score, scores, space))
    metrics["eval_seconds"] = time.perf_counter() - start
    result = EvalResult(metrics, scores)
    if opts.plots and plot_dir is not None:
        result.plots = _plots(model, data, samples_data, preprocess, lam, scores, plot_dir)
    return result


def _sphere_grid(model, truth) -> dict:
    """:func:`rfdist.eval.metrics.sphere_density_grid` of ``model`` (in the model's dtype)."""
    dtype = next(model.parameters()).dtype
    return sphere_density_grid(lambda x: model.log_prob(x.to(dtype)), truth)


def _ood_metrics(model, data, ood, opts, test, score, scores, space) -> dict[str, float]:
    from rfdist.data.errors import DataError

    if tuple(ood.shape) != tuple(model.data_shape):
        raise DataError(f"{ood.uri}: rows have shape {ood.shape}, the model expects {model.data_shape}")
    for what in (data, ood):
        if what.train is None:
            raise DataError(f"{what.uri}: the OOD threshold is fit on a 'train' split, which is missing")
    rows = opts.ood_train_rows
    train_in = score(_subset(data.train, rows, opts.seed), "train (in)", opts.seed + 1)
    train_out = score(_subset(ood.train, rows, opts.seed), "train (out)", opts.seed + 2)
    test_ood = ood.test[: data.test.shape[0]]
    test_out = score(test_ood, "test (out)", opts.seed + 3)
    for name, parts in (("train_in", train_in), ("train_out", train_out), ("test_out", test_out)):
        scores.update({f"{name}_{k}": v.numpy() for k, v in parts.items()})
    kinds = {"data": "data"}
    if space is not None:
        kinds[space] = "model"
    out: dict[str, float] = {"ood_n_train": float(rows), "ood_n_test_out": float(test_ood.shape[0])}
    sigma2 = offmanifold_variance(train_in["reconstruction"], model.data_dim - model.latent_dim)
    out["ood_sigma2"] = sigma2
    for name, parts in (
        ("test", test),
        ("train_in", train_in),
        ("train_out", train_out),
        ("test_out", test_out),
    ):
        parts["combined"] = torch.as_tensor(
            manifold_ood_score(parts["model"], parts["reconstruction"], sigma2)
        )
        scores[f"{name}_combined"] = parts["combined"].numpy()
    for label, key in [*kinds.items(), ("reconstruction", "reconstruction"), ("combined", "combined")]:
        sign = -1.0 if key == "reconstruction" else 1.0  # higher score = more in-distribution
        tr_in, tr_out = sign * train_in[key].numpy(), sign * train_out[key].numpy()
        te_in, te_out = sign * test[key].numpy(), sign * test_out[key].numpy()
        stump = ood_stump(tr_in, tr_out)
        correct = stump.predict_in(te_in).sum() + (~stump.predict_in(te_out)).sum()
        suffix = "" if label == "data" and space is None else f"_{label}"
        out[f"ood_accuracy{suffix}"] = float(correct / (te_in.size + te_out.size))
        out[f"ood_auroc{suffix}"] = auroc(te_in, te_out)
        out[f"ood_threshold{suffix}"] = stump.threshold
        out[f"ood_in_above{suffix}"] = float(stump.in_above)
    return out


def _plots(model, data, samples_data, preprocess, lam, scores, folder: Path) -> list[Path]:
    from rfdist.eval.plots import plot_model, pyplot

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    if len(model.data_shape) == 1 and model.data_dim in (2, 3):
        paths.append(plot_model(model, data.test, folder / "manifold.png"))
    elif len(model.data_shape) == 3:
        paths.append(_sample_grid(samples_data, data.test, folder / "samples.png"))
    if "sphere_log_model" in scores:
        paths.append(_sphere_density_plot(scores, folder / "sphere_density.png"))
    if "test_out_data" in scores:
        plt = pyplot()
        key = "model" if preprocess != "none" else "data"
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, colour in (("test", "tab:green"), ("test_out", "tab:blue")):
            ax.hist(scores[f"{name}_{key}"], bins=60, alpha=0.6, color=colour, density=True,
                    label="in (test)" if name == "test" else "out (test)")  # fmt: skip
        ax.set_xlabel(f"log-likelihood ({'logit' if preprocess == 'logit' else key} space)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "ood_hist.png", dpi=90)
        plt.close(fig)
        paths.append(folder / "ood_hist.png")
    return paths


def _sphere_density_plot(scores: dict[str, np.ndarray], path: Path) -> Path:
    """Learned vs true density on the sphere as latitude/longitude heat maps (one colour scale)."""
    from rfdist.eval.plots import pyplot

    plt = pyplot()
    lat, lon = np.degrees(np.arcsin(scores["sphere_z"])), np.degrees(scores["sphere_phi"])
    learned, true = np.exp(scores["sphere_log_model"]), np.exp(scores["sphere_log_true"])
    top = float(np.nanmax(true)) * 1.5
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    for ax, values, title in ((axes[0], learned, "learned p(x)"), (axes[1], true, "true p(x)")):
        mesh = ax.pcolormesh(lon, lat, np.clip(values, 0, top), shading="nearest", vmin=0, vmax=top)
        ax.set_title(title)
        ax.set_xlabel("longitude (°)")
    axes[0].set_ylabel("latitude (°)")
    fig.colorbar(mesh, ax=axes, label="density w.r.t. area")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _sample_grid(samples: torch.Tensor, data: torch.Tensor, path: Path, count: int = 64) -> Path:
    from rfdist.eval.plots import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    side = int(math.sqrt(min(count, samples.shape[0], data.shape[0])))
    for ax, images, title in ((axes[0], samples, "samples"), (axes[1], data, "test data")):
        c, h, w = images.shape[1:]
        grid = images[: side * side].reshape(side, side, c, h, w).permute(0, 3, 1, 4, 2)
        ax.imshow(
            grid.reshape(side * h, side * w, c).squeeze(-1).float() / 255.0, cmap="gray", vmin=0, vmax=1
        )
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def source_run_id(model_uri: str, tracking_uri: str) -> str | None:
    """The training run a model URI comes from (``runs:/ID/…`` or a registered version's run)."""
    if model_uri.startswith("runs:/"):
        return model_uri[len("runs:/") :].split("/", 1)[0]
    if model_uri.startswith("models:/"):
        from rfdist.tracking.models import get_model_record

        return get_model_record(model_uri, tracking_uri=tracking_uri).run_id
    return None


def _run_params(run_id: str | None, tracking_uri: str) -> dict[str, str]:
    if not run_id:
        return {}
    import mlflow

    try:
        return dict(mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data.params)
    except Exception:
        return {}


def resolve_preprocess(opts: EvalOptions, params: dict[str, str], data_shape) -> tuple[str, float]:
    """Preprocessing: the flag, else the training run's ``data.preprocess``, else by shape."""
    kind = opts.preprocess or params.get("data.preprocess") or ("logit" if len(data_shape) == 3 else "none")
    lam = opts.logit_lambda
    if lam is None:
        lam = float(params.get("data.logit_lambda", 1e-6))
    return kind, lam


def log_evaluation(
    result: EvalResult,
    *,
    model_uri: str,
    opts: EvalOptions,
    tracking_uri: str,
    model_run_id: str | None,
    extra_params: dict[str, Any] | None = None,
) -> str:
    """Log ``result`` to a new MLflow run linked to ``model_run_id``; returns the run id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_id = None
    if model_run_id:
        try:
            experiment_id = client.get_run(model_run_id).info.experiment_id
        except Exception:
            experiment_id = None
    if experiment_id is None:
        from rfdist.tracking.lineage import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

        mlflow.set_tracking_uri(tracking_uri)
        experiment = mlflow.set_experiment("rfdist-eval")
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # the UI's model-training view
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    tags = {"rfdist.kind": "evaluation", "rfdist.model_uri": model_uri}
    if model_run_id:
        tags["rfdist.model_run_id"] = model_run_id
        tags["mlflow.parentRunId"] = model_run_id
    run = client.create_run(experiment_id, run_name=f"eval {model_uri}", tags=tags)
    run_id = run.info.run_id
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    params = {f"eval.{k}": v for k, v in asdict(opts).items() if k not in ("progress",)}
    params.update(extra_params or {})
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in result.metrics.items() if math.isfinite(float(v))],
        params=[Param(k, str(v)[:500]) for k, v in params.items()],
    )
    client.log_dict(run_id, result.metrics, "eval/metrics.json")
    for path in result.plots:
        client.log_artifact(run_id, str(path), artifact_path="eval/plots")
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def run_eval(
    model_uri: str,
    opts: EvalOptions,
    *,
    tracking_uri: str | None = None,
    json_out: Path | None = None,
) -> tuple[EvalResult, str]:
    """Load, evaluate, log: the whole ``rfdist eval``. Returns the result and the MLflow run id."""
    from rfdist.tracking.models import load_model, resolve_tracking_uri

    tracking_uri = resolve_tracking_uri(tracking_uri)
    data = load_eval_data(opts.data, test_rows=opts.max_rows, seed=opts.seed)  # fail fast on bad paths
    ood = (
        load_eval_data(opts.ood_data, test_rows=opts.max_rows, seed=opts.seed + 7) if opts.ood_data else None
    )
    torch.manual_seed(opts.seed)
    model = load_model(model_uri, tracking_uri=tracking_uri)
    run_id = source_run_id(model_uri, tracking_uri)
    preprocess, lam = resolve_preprocess(opts, _run_params(run_id, tracking_uri), model.data_shape)
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluate_model(
            model, data, opts, preprocess=preprocess, lam=lam, ood=ood, plot_dir=Path(tmp)
        )
        eval_run_id = log_evaluation(
            result, model_uri=model_uri, opts=opts, tracking_uri=tracking_uri, model_run_id=run_id,
            extra_params={"eval.resolved_preprocess": preprocess, "eval.logit_lambda_used": lam},
        )  # fmt: skip
    if json_out is not None:
        payload = {
            "model_uri": model_uri,
            "eval_run_id": eval_run_id,
            "model_run_id": run_id,
            **result.metrics,
        }
        json_out.write_text(json.dumps(payload, indent=2))
    return result, eval_run_id

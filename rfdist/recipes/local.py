"""Single-process training run from a :class:`~rfdist.config.RunConfig` (no Ray, no MLflow).

Used by ``rfdist train --local`` and by tests; the Ray Train worker reuses the same pieces
(:func:`load_arrays`, :func:`rfdist.core.engine.train_step`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from rfdist.config import ConfigError, RunConfig
from rfdist.core.builders import build_model
from rfdist.core.engine import evaluate_nll, fit
from rfdist.core.model import RectangularFlow
from rfdist.data.synthetic import make_synthetic
from rfdist.eval.metrics import circle_metrics

__all__ = ["LoadedData", "load_arrays", "run_local"]


@dataclass
class LoadedData:
    """In-memory splits (float32 tensors, rows × data_shape) and what generated them."""

    train: torch.Tensor
    test: torch.Tensor
    data_shape: tuple[int, ...]
    truth: Any = None  # a synthetic generator with ``log_density`` when known


def load_arrays(cfg: RunConfig) -> LoadedData:
    """Load (or generate) the train and test splits the config names."""
    if cfg.data.synthetic is not None:
        source = make_synthetic(cfg.data.synthetic)
        train = source.sample(cfg.data.train_rows, generator=torch.Generator().manual_seed(cfg.seed))
        test = source.sample(cfg.data.test_rows, generator=torch.Generator().manual_seed(cfg.seed + 1))
        return LoadedData(train, test, (source.data_dim,), source)
    from rfdist.data.preprocess import batch_preprocessor
    from rfdist.data.reader import load_split, open_dataset  # the Parquet layer

    info = open_dataset(cfg.data.path, features=cfg.data.features, storage_options=cfg.data.storage_options)
    try:
        prep = batch_preprocessor(
            cfg.data.preprocess, tuple(info.shape), lam=cfg.data.logit_lambda, stats=info.stats
        )
    except ValueError as exc:
        raise ConfigError(f"data.preprocess: {exc}") from None
    train = prep(load_split(info, "train"))
    test = prep(load_split(info, "test") if "test" in info.splits else load_split(info, "val"))
    return LoadedData(train, test, tuple(info.shape))


def run_local(cfg: RunConfig, *, progress: bool = True) -> tuple[RectangularFlow, dict[str, float]]:
    """Train per ``cfg`` in this process; returns the model and its test metrics."""
    torch.manual_seed(cfg.seed)
    data = load_arrays(cfg)
    spec = cfg.model.spec(data.data_shape, cfg.seed)
    model = build_model(spec)
    if tuple(data.train.shape[1:]) != spec.data_shape:
        raise ConfigError(
            f"data rows have shape {tuple(data.train.shape[1:])}, model expects {spec.data_shape}"
        )
    start = time.perf_counter()
    history = fit(
        model,
        data.train,
        steps=cfg.train.max_steps,
        batch_size=cfg.train.batch_size,
        lr=cfg.train.lr,
        options=cfg.loss_options(),
        grad_clip=cfg.train.grad_clip,
        warmup_steps=cfg.train.warmup_steps,
        max_consecutive_skips=cfg.train.max_consecutive_skips,
        seed=cfg.seed,
        log_every=cfg.train.log_every,
        progress=progress,
        manifold_steps=cfg.train.manifold_steps,
    )
    elapsed = time.perf_counter() - start
    metrics = {
        "test_nll": evaluate_nll(model, data.test),
        "train_seconds": elapsed,
        "step_s": elapsed / max(len(history), 1),
        "examples_per_s": cfg.train.batch_size * len(history) / elapsed,
        "skipped_steps": sum(h["skipped"] for h in history),
    }
    with torch.no_grad():
        recon = (model.project(data.test) - data.test).pow(2).flatten(1).sum(-1).mean()
    metrics["test_reconstruction"] = float(recon)
    if data.truth is not None:
        metrics["true_entropy"] = float(data.truth.entropy())
        samples = model.sample(5000)
        metrics["sample_off_manifold"] = float((samples.norm(dim=-1) - 1).abs().mean())
        if cfg.data.synthetic == "von-mises":
            metrics.update(circle_metrics(model, data.truth))
    return model, metrics

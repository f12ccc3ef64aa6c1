"""One training step and a single-process training loop over in-memory tensors.

:func:`train_step` is the unit every trainer reuses: the plain loop here, and the Ray Train
worker (which passes a ``DistributedDataParallel``-wrapped model; calling the module, not
``.loss``, is what lets DDP all-reduce the gradients). Plain PyTorch, no Ray or MLflow.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from rfdist.core.model import Mode
from rfdist.core.options import (
    BETA,
    DEFAULTS,
    LIKELIHOOD_WEIGHT,
    MODE,
    EstimatorName,
    EstimatorOptions,
    MatvecMode,
    PreconditionerKind,
    Probe,
)

__all__ = [
    "LossOptions",
    "StepResult",
    "cosine_schedule",
    "fit",
    "iterate_minibatches",
    "load_optimizer_state",
    "make_optimizer",
    "train_step",
]


@dataclass
class LossOptions:
    """What one training step's loss is: the loss's own settings (``mode``, ``beta``,
    ``likelihood_weight``) and the estimator's, flat (``estimator`` is
    :class:`~rfdist.core.options.EstimatorOptions`'s ``name``).

    The estimator fields' defaults are :data:`~rfdist.core.options.DEFAULTS`' (``rfdist train``'s);
    :meth:`estimator_options` gives them as the record :meth:`RectangularFlow.loss` takes.
    """

    mode: Mode = MODE
    estimator: EstimatorName = DEFAULTS.name
    beta: float = BETA
    likelihood_weight: float = LIKELIHOOD_WEIGHT
    num_samples: int = DEFAULTS.num_samples
    cg_tol: float = DEFAULTS.cg_tol
    cg_max_iters: int | None = DEFAULTS.cg_max_iters
    probe: Probe = DEFAULTS.probe
    chunk_size: int | None = DEFAULTS.chunk_size
    matvec: MatvecMode = DEFAULTS.matvec
    preconditioner: PreconditionerKind = DEFAULTS.preconditioner
    precond_rows: int | None = DEFAULTS.precond_rows
    precond_every: int | None = DEFAULTS.precond_every
    check_every: int = DEFAULTS.check_every
    max_jitter_tries: int = DEFAULTS.max_jitter_tries
    precond_ridge: float = DEFAULTS.precond_ridge

    @classmethod
    def of(cls, estimator: EstimatorOptions, **loss: Any) -> LossOptions:
        """Loss options with the estimator settings of the record ``estimator``; ``loss`` sets
        ``mode``, ``beta`` or ``likelihood_weight`` (their defaults are the class's own)."""
        settings = estimator.as_dict()
        return cls(estimator=settings.pop("name"), **settings, **loss)

    def estimator_options(self) -> EstimatorOptions:
        """The estimator settings as the record :meth:`RectangularFlow.loss` takes."""
        names = EstimatorOptions.field_names() - {"name"}
        return EstimatorOptions(name=self.estimator, **{n: getattr(self, n) for n in names})

    def kwargs(self) -> dict:
        """Keyword arguments of :meth:`RectangularFlow.loss` (and so of a DDP wrapper's call)."""
        return {
            "mode": self.mode,
            "beta": self.beta,
            "likelihood_weight": self.likelihood_weight,
            "options": self.estimator_options(),
        }


def make_optimizer(params, lr: float) -> torch.optim.Adam:
    """Adam with torch's fused kernel where every parameter allows it (CPU or CUDA floats).

    The per-parameter Python loop of the default CPU implementation cost 10–15 % of a small
    model's step (bench/estimators.py); the fused update is the same algorithm.
    """
    params = list(params)
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, keeping this optimizer's ``fused`` choice (a
    checkpoint written before :func:`make_optimizer` would otherwise switch it off)."""
    fused = [group.get("fused") for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, fused, strict=True):
        if "fused" in group:
            group["fused"] = flag


@dataclass
class StepResult:
    """What one :func:`train_step` did: ``skipped`` when the gradient was not finite."""

    metrics: dict[str, float]
    skipped: bool


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    options: LossOptions,
    *,
    grad_clip: float | None = None,
    likelihood_weight: float | None = None,
    freeze_manifold: bool = False,
) -> StepResult:
    """Forward, backward and (unless the gradient is non-finite) an optimizer step.

    The skip decision uses the gradient norm *after* backward, which under DDP is computed
    from the all-reduced gradients and so is identical on every rank: all ranks skip together.
    It costs one host sync per step (shared with reading the metrics, and judged on them: the
    loss and gradient norm as float32), none inside the loss.

    Arguments:
        model: a :class:`~rfdist.core.model.RectangularFlow` or a DDP wrapper of one.
        optimizer: its optimizer.
        x: a batch of data rows.
        options: loss options.
        grad_clip: clip the global gradient norm to this value (``None`` = no clipping).
        likelihood_weight: overrides ``options.likelihood_weight`` (for warm-up schedules).
        freeze_manifold: two-step's density phase: only the latent density's parameters move.
            The loss keeps the reconstruction term at weight 0, so every parameter still takes
            part (DDP's reducer needs that) with an exactly zero gradient, and the manifold's
            gradients are then dropped, so the optimizer skips them (no momentum drift either).

    Returns:
        A :class:`StepResult` with the loss parts, ``grad_norm`` and ``skipped`` as floats.
    """
    kwargs = options.kwargs()
    if likelihood_weight is not None:
        kwargs["likelihood_weight"] = likelihood_weight
    if freeze_manifold:
        if options.mode != "two_step":
            raise ValueError(f"freeze_manifold needs mode='two_step', got {options.mode!r}")
        kwargs["beta"] = 0.0
    optimizer.zero_grad(set_to_none=True)
    loss, parts = model(x, **kwargs)
    loss.backward()
    if freeze_manifold:
        density = {id(p) for p in getattr(model, "module", model).density.parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) not in density:
                    p.grad = None
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    grads = [p.grad for p in params]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    if grad_clip is not None:  # (without clipping, no per-parameter rescale by 1)
        torch.nn.utils.clip_grads_with_norm_(params, grad_clip, grad_norm)
    names = [*parts, "grad_norm", "step_loss"]
    values = torch.stack(
        [v.detach().float().reshape(()) for v in parts.values()]
        + [grad_norm.detach().float(), loss.detach().float().reshape(())]
    )
    metrics = dict(zip(names, values.tolist(), strict=True))  # the step's one host sync
    # the finiteness check on the host, on the values that sync brought (no extra kernels)
    skipped = not (math.isfinite(metrics["grad_norm"]) and math.isfinite(metrics.pop("step_loss")))
    if not skipped:
        optimizer.step()
    else:
        optimizer.zero_grad(set_to_none=True)
    metrics["skipped"] = float(skipped)
    return StepResult(metrics=metrics, skipped=skipped)


def iterate_minibatches(
    data: Tensor, batch_size: int, *, generator: torch.Generator | None = None
) -> Iterator[Tensor]:
    """Endless shuffled minibatches of rows of ``data`` (reshuffled every epoch)."""
    n = data.shape[0]
    if n == 0:
        raise ValueError("iterate_minibatches: the dataset is empty")
    batch_size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            yield data[order[start : start + batch_size].to(data.device)]


@torch.no_grad()
def evaluate_nll(model: nn.Module, data: Tensor, *, batch_size: int = 1000) -> float:
    """Mean exact negative log-likelihood (on-manifold) of ``data`` under ``model``."""
    total = data.new_zeros((), dtype=torch.float64)
    for start in range(0, data.shape[0], batch_size):
        total = total - model.log_prob(data[start : start + batch_size]).double().sum()
    return float(total) / data.shape[0]


def cosine_schedule(total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor at step ``s``: a cosine decay from 1 to 0.1 over ``total_steps``.

    A plain function (not a callable object), so ``LambdaLR.state_dict()`` stores nothing for it
    and a checkpoint's scheduler state is just its step count and rates.
    """

    def factor(s: int) -> float:
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(total_steps, 1)))

    return factor


def fit(
    model: nn.Module,
    data: Tensor,
    *,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    options: LossOptions | None = None,
    grad_clip: float | None = 10.0,
    warmup_steps: int = 0,
    max_consecutive_skips: int = 20,
    seed: int = 0,
    log_every: int = 0,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
    manifold_steps: int | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` on the rows of ``data`` for ``steps`` Adam steps (single process).

    A likelihood warm-up ramps the likelihood weight from 0 to 1 over ``warmup_steps`` (ML mode
    only). Learning rate follows a cosine decay to 10 %. ``manifold_steps`` (two-step only):
    after that many steps the manifold is frozen and only the latent density trains (see
    :func:`train_step`'s ``freeze_manifold``). Returns the per-step metrics.

    Example:
        >>> from rfdist import ModelSpec, build_model
        >>> model = build_model(ModelSpec(data_shape=(2,), latent_dim=1, flow_hidden=(8,)))
        >>> history = fit(model, torch.randn(64, 2), steps=2, batch_size=32)
        >>> len(history)
        2
    """
    options = options or LossOptions()
    optimizer = make_optimizer(model.parameters(), lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(steps))
    batches = iterate_minibatches(data, batch_size, generator=torch.Generator().manual_seed(seed))
    history: list[dict[str, float]] = []
    skips = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train", unit="step")
    model.train()
    for step in range(1, steps + 1):
        start = time.perf_counter()
        weight = min(1.0, step / warmup_steps) if warmup_steps else None
        result = train_step(
            model, optimizer, next(batches), options, grad_clip=grad_clip, likelihood_weight=weight,
            freeze_manifold=manifold_steps is not None and step > manifold_steps,
        )  # fmt: skip
        schedule.step()
        skips = skips + 1 if result.skipped else 0
        if skips >= max_consecutive_skips:
            raise FloatingPointError(
                f"{skips} consecutive steps had a non-finite loss or gradient (last at step {step})"
            )
        result.metrics["step_s"] = time.perf_counter() - start
        result.metrics["lr"] = schedule.get_last_lr()[0]
        history.append(result.metrics)
        if callback is not None:
            callback(step, result.metrics)
        if bar is not None:
            bar.update(1)
            if log_every and step % log_every == 0:
                bar.set_postfix(loss=f"{result.metrics['loss']:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return history

"""One Ray Train worker of a training run: :func:`train_loop_per_worker` and its phases.

The driver (:func:`rfdist.recipes.train.run_training`) hands every worker the same loop
config; :func:`train_loop_per_worker` builds a :class:`TrainWorker` from it and runs it:

* :meth:`TrainWorker.restore` — the newest readable checkpoint (Ray Train's or one on storage
  it never registered): model, optimizer, scheduler, step, this rank's RNG and data position;
* :meth:`TrainWorker.open_streams` — the rank's training batches (seeded, resumable epochs,
  :mod:`rfdist.runtime.epochs`), its validation shard and, on rank 0, the MLflow metric sink;
* :meth:`TrainWorker.step` — the core :func:`rfdist.core.engine.train_step` on the
  DDP-wrapped model (calling the wrapper is what all-reduces the gradients);
* :meth:`TrainWorker.validate` / :meth:`TrainWorker.checkpoint` — the validation NLL over all
  ranks; rank 0 writes ``state.pt`` with every rank's RNG and data position and reports it.

Callers (tests) may observe the loop with :class:`WorkerHook` objects (fault injection, row
recording); the product passes none.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch

from rfdist.config import ConfigError, RunConfig
from rfdist.core.builders import ModelSpec, build_model
from rfdist.core.engine import cosine_schedule, load_optimizer_state, make_optimizer, train_step
from rfdist.runtime import worker_state
from rfdist.runtime.checkpoint import (
    TrainingState,
    save_state,
    state_to_resume,
    storage_checkpoints,
    storage_target,
)
from rfdist.runtime.console import quiet_train_reports, worker_print
from rfdist.runtime.epochs import (
    DataPosition,
    EmptyEpochError,
    EpochStream,
    epoch_seed,
    epoch_shard,
    rank_rows,
)
from rfdist.tracking.metric_names import SKIPPED_STEPS, VAL_NLL, report_value

__all__ = [
    "FAULT_TAG",
    "DataFault",
    "TrainWorker",
    "WorkerHook",
    "preprocess_fn",
    "resolve_auto",
    "train_loop_per_worker",
]


class DataFault(ValueError):
    """A worker found the data unusable (no full batch, an empty split); the message says which."""


class WorkerHook:
    """Observes a worker's loop; the methods here do nothing, a hook overrides what it needs.

    Hooks are given to ``run_training(..., worker_hooks=[...])`` and travel, pickled, in the
    train loop config to every worker (again after each restart), so they must be picklable
    by the workers (a test module: ``ray.cloudpickle.register_pickle_by_value``). The product
    itself passes none; tests use them to inject a fault or record the rows each rank saw.
    """

    def on_batch(self, rank: int, position: DataPosition, batch: torch.Tensor) -> torch.Tensor | None:
        """A training batch was fetched: its stored rows (before preprocessing) and position.

        Returns ``None``, or rows to train on instead (a test injects values the data lacks).
        """

    def on_step(self, rank: int, step: int) -> None:
        """Step ``step`` is about to train on the batch fetched last."""


def preprocess_fn(cfg: RunConfig, shape: tuple[int, ...], stats: dict | None):
    """Per-batch preprocessing on the worker's device (flat rows → model input)."""
    from rfdist.data.preprocess import batch_preprocessor

    try:
        return batch_preprocessor(cfg.data.preprocess, shape, lam=cfg.data.logit_lambda, stats=stats)
    except ValueError as exc:
        raise ConfigError(f"data.preprocess: {exc}") from None


class _CostMeter:
    """What a run's steps cost: compute seconds, volume-term passes and peak memory.

    Reported at every checkpoint (and so to Ray Tune), carried across resumes through the
    checkpoint's metrics. ``tangent_passes`` counts forward-mode passes through the decoder
    (``d`` per step for the exact estimator, CG matvecs + 2 for Hutchinson). Peak memory is
    the device allocator's high-water mark on CUDA and the worker process's peak RSS on CPU.
    """

    def __init__(self, device: torch.device, previous: dict | None = None) -> None:
        self.device = device
        previous = previous or {}
        self.steps = int(report_value(previous, "perf/cost_steps", 0.0))
        self.seconds = report_value(previous, "perf/train_time_s", 0.0)
        self.matvecs = report_value(previous, "perf/matvecs_per_step", 0.0) * self.steps
        self.passes = report_value(previous, "perf/tangent_passes_per_step", 0.0) * self.steps

    def add(self, metrics: dict[str, float]) -> None:
        self.steps += 1
        self.seconds += metrics["step_s"]
        self.matvecs += metrics.get("matvecs", 0.0)
        self.passes += metrics.get("tangent_passes", 0.0)

    def peak_memory_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    def summary(self) -> dict[str, float]:
        steps = max(self.steps, 1)
        return {
            "perf/cost_steps": float(self.steps),
            "perf/train_time_s": self.seconds,
            "perf/s_per_step": self.seconds / steps,
            "perf/matvecs_per_step": self.matvecs / steps,
            "perf/tangent_passes_per_step": self.passes / steps,
            "perf/peak_mem_mb": self.peak_memory_mb(),
        }


def resolve_auto(
    model: torch.nn.Module, x: torch.Tensor, options: Any, *, world: int
) -> tuple[Any, dict[str, float]]:
    """``estimator: auto`` → exact or hutchinson, timed on this batch; every rank decides alike.

    Each rank measures one step of each estimator (:func:`rfdist.core.costmodel.measure_estimators`);
    the slowest rank's times are shared (all-reduce max), so all ranks pick the same one.
    """
    from dataclasses import replace

    from rfdist.core.costmodel import choose_measured, measure_estimators

    seconds = measure_estimators(model, x, options)
    timing = torch.tensor([seconds["exact"], seconds["hutchinson"]], dtype=torch.float64, device=x.device)
    if world > 1:
        torch.distributed.all_reduce(timing, op=torch.distributed.ReduceOp.MAX)
    measured = {"exact": float(timing[0]), "hutchinson": float(timing[1])}
    choice = choose_measured(measured)
    return replace(options, estimator=choice), measured


def _log_picture(log: Any, model: Any, spec: ModelSpec, rows: Any, step: int, val_nll: float) -> None:
    """Queue the model's picture at a checkpoint (MLflow ``images/``, key ``model``, this step)."""
    from rfdist.eval.plots import model_image

    try:
        image = model_image(model, spec, rows, title=f"step {step} · val NLL {val_nll:.4f}")
    except Exception as exc:  # a picture must never stop training
        worker_print(
            f"[rfdist] warning: no checkpoint picture at step {step} ({type(exc).__name__}: {exc})",
            flush=True,
        )
        return
    log.image("model", image, step)


def _fault_hint(x: torch.Tensor, cfg: RunConfig, saved_any: bool) -> str:
    """The tail of a non-finite-training message: is the data the cause, is a checkpoint kept?"""
    from rfdist.data.validate import FLOAT32_SQUARE_LIMIT

    kept = "; the last good checkpoint is kept" if saved_any else "; no checkpoint was written"
    largest = float(x.detach().abs().nan_to_num(float("inf")).max()) if x.numel() else 0.0
    if not math.isfinite(largest) or largest > FLOAT32_SQUARE_LIMIT:
        where = cfg.data.path or f"data.synthetic {cfg.data.synthetic}"
        return (
            f"{kept}. The data is the likely cause: this batch holds |x| = {largest:.3g} "
            f"(run `rfdist data validate {where}`)"
        )
    return kept


class TrainWorker:
    """One rank's training loop, phase by phase (see the module docstring); built per (re)start."""

    def __init__(self, loop_config: dict[str, Any]) -> None:
        import ray.train
        import ray.train.torch

        quiet_train_reports()
        self.loop_config = loop_config
        self.cfg = cfg = RunConfig.model_validate(loop_config["config"])
        self.spec = ModelSpec.from_dict(loop_config["spec"])
        self.hooks: list[WorkerHook] = list(loop_config.get("hooks") or [])
        self.context = ray.train.get_context()
        self.rank, self.world = self.context.get_world_rank(), self.context.get_world_size()
        self.device = ray.train.torch.get_device()
        torch.manual_seed(cfg.seed + 1000 * self.rank)
        self.model = build_model(self.spec).to(self.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg.train.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_schedule(cfg.train.max_steps)
        )
        self.ddp_model: torch.nn.Module = self.model  # the DDP wrapper once restored
        self.step = 0
        self.state: TrainingState | None = None
        self.position: DataPosition | None = None
        self.per_worker_batch = max(1, cfg.train.batch_size // self.world)
        self.log: Any = None  # rank 0's MLflow metric sink
        self.plot_rows: torch.Tensor | None = None  # rank 0: rows drawn beside each checkpoint's model
        self.consecutive_skips = self.skipped_total = self.examples = 0
        self.window: list[dict[str, float]] = []

    # ---------------------------------------------------------------------- restore
    def restore(self) -> None:
        """Load the newest readable checkpoint, if any, then wrap the model in DDP."""
        import ray.train
        import ray.train.torch

        cfg, rank = self.cfg, self.rank
        # storage is scanned again at every (re)start: a checkpoint written shortly before a worker
        # crashed may not be registered by Ray's controller yet (the driver's scan predates the run)
        found = storage_checkpoints(
            *storage_target(cfg.storage.path, cfg.storage.storage_options), self.loop_config.get("ray_name", cfg.name)
        )
        state = state_to_resume(
            ray.train.get_checkpoint(),
            found or self.loop_config.get("unregistered_checkpoint"),
            self.device,
            warn=(lambda m: worker_print(m, flush=True)) if rank == 0 else None,
        )
        self.state = state
        if state is not None:
            self.model.load_state_dict(state.model)
            load_optimizer_state(self.optimizer, state.optimizer)
            self.scheduler.load_state_dict(state.scheduler)
            self.step = state.step
            self.position = worker_state.restore(state.workers, rank, self.world, self.device)
            if self.position is None and state.rng is not None and rank == 0:  # older format: rank 0 only
                torch.set_rng_state(state.rng)
            if rank == 0:
                worker_print(f"[rfdist] resumed from checkpoint at step {self.step}", flush=True)
        self.ddp_model = ray.train.torch.prepare_model(self.model)

    # ---------------------------------------------------------------------- streams
    def open_streams(self) -> None:
        """The rank's training batches, its validation shard, rank 0's metric sink and monitor."""
        import ray.train

        from rfdist.runtime.datasets import stream_options
        from rfdist.runtime.system_metrics import start_monitor

        cfg, context, loop_config = self.cfg, self.context, self.loop_config
        self.prep = preprocess_fn(cfg, tuple(self.spec.data_shape), loop_config.get("stats"))
        self.options = cfg.loss_options()
        self.train_data = loop_config.get("train_dataset")  # materialized: re-ordered per epoch here
        self.train_shard = ray.train.get_dataset_shard("train") if self.train_data is None else None
        val_data = loop_config.get("val_dataset")  # materialized: this rank's part held in memory
        self.val_rows = None if val_data is None else rank_rows(val_data, self.rank, self.world)
        self.val_shard = ray.train.get_dataset_shard("val") if val_data is None else None
        if self.rank == 0:  # a tracking-server outage buffers and retries (rfdist.tracking.metric_log)
            from rfdist.tracking.metric_log import MetricLogger

            self.log = MetricLogger(loop_config["tracking_uri"], loop_config["run_id"])
        self.monitor = start_monitor(
            loop_config["run_id"], loop_config["tracking_uri"], enabled=cfg.tracking.system_metrics,
            interval_s=cfg.tracking.system_metrics_interval_s, local_rank=context.get_local_rank(),
            node_id=f"node{context.get_node_rank()}" if context.get_local_world_size() < self.world else None,
        )  # fmt: skip
        self.stream_kw = stream_options(
            self.device
        )  # rows arrive as stored (uint8 pixels); prep makes them float
        self.buffer = cfg.data.shuffle_buffer if cfg.data.shuffle and cfg.data.shuffle_buffer > 0 else None
        # with a seeded shuffle buffer, Ray's batch prefetching made the row order differ between a
        # resumed and an uninterrupted run (found by tests/test_train_ray_equivalence.py): no prefetch
        self.epoch_kw = {
            k: v for k, v in self.stream_kw.items() if not (self.buffer and k == "prefetch_batches")
        }
        self.epochs = EpochStream(self.open_epoch, self.position)

    def open_epoch(self, epoch: int) -> Any:
        """This rank's batches of epoch ``epoch`` (seeded by the run's seed, the epoch and the rank)."""
        cfg, source = self.cfg, self.train_shard
        if self.train_data is not None:
            source = epoch_shard(
                self.train_data, seed=cfg.seed, epoch=epoch, rank=self.rank, world=self.world,
                shuffle=cfg.data.shuffle,
            )  # fmt: skip
        return source.iter_torch_batches(
            batch_size=self.per_worker_batch,
            device=self.device,
            drop_last=True,
            local_shuffle_buffer_size=self.buffer,
            local_shuffle_seed=epoch_seed(cfg.seed, epoch, self.rank) if self.buffer else None,
            **self.epoch_kw,
        )

    def batches(self) -> Iterator[torch.Tensor]:
        """Preprocessed training batches, epoch after epoch; each raw batch shown to the hooks."""
        try:
            for batch in self.epochs:
                x = batch["x"]
                for hook in self.hooks:
                    x = hook.on_batch(self.rank, self.epochs.position, x)
                    x = batch["x"] if x is None else x
                yield self.prep(x)
        except EmptyEpochError:  # drop_last and too few rows: another pass would loop forever
            raise DataFault(
                f"the train split gave worker {self.rank} no full batch of {self.per_worker_batch} rows "
                f"(train.batch_size {self.cfg.train.batch_size} over {self.world} workers): lower "
                "train.batch_size or add rows"
            ) from None

    def resolve_estimator(self, x: torch.Tensor) -> None:
        """``estimator: auto``: time both estimators on ``x`` and keep the faster (every rank alike)."""
        self.options, measured = resolve_auto(self.model, x, self.options, world=self.world)
        if self.rank == 0:
            worker_print(
                f"[rfdist] estimator auto → {self.options.estimator} (a step: exact "
                f"{measured['exact']:.3f} s, hutchinson {measured['hutchinson']:.3f} s)",
                flush=True,
            )
            self.log({f"auto_{name}_s": value for name, value in measured.items()}, self.step)
            self.log.tag("rfdist.estimator", self.options.estimator)

    # ---------------------------------------------------------------------- step
    def train_on(self, x: torch.Tensor, data_wait: float) -> None:
        """Step ``self.step + 1`` on batch ``x`` (DDP all-reduces the gradients); keep its metrics."""
        cfg = self.cfg
        self.step += 1
        step = self.step
        if self.plot_rows is None and self.log is not None:
            self.plot_rows = x[:256].clone()
        for hook in self.hooks:
            hook.on_step(self.rank, step)
        tick = time.perf_counter()
        warm = min(1.0, step / cfg.train.warmup_steps) if cfg.train.warmup_steps else None
        frozen = cfg.train.manifold_steps is not None and step > cfg.train.manifold_steps
        if frozen and step == cfg.train.manifold_steps + 1 and self.rank == 0:
            worker_print(f"[rfdist] step {step}: manifold frozen (train.manifold_steps), the latent density trains on",
                         flush=True)  # fmt: skip
        result = train_step(
            self.ddp_model, self.optimizer, x, self.options, grad_clip=cfg.train.grad_clip,
            likelihood_weight=warm, freeze_manifold=frozen,
        )  # fmt: skip
        self.scheduler.step()
        self.examples += x.shape[0] * self.world
        if result.skipped:
            self.consecutive_skips += 1
            self.skipped_total += 1
            if self.skipped_total == 1:
                self.name_first_skip(x, step)
            if self.consecutive_skips >= cfg.train.max_consecutive_skips:
                raise FloatingPointError(
                    f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient "
                    f"(last at step {step}){_fault_hint(x, cfg, self.saved_any)}"
                )
        else:
            self.consecutive_skips = 0
        metrics = dict(result.metrics)
        metrics.pop("skipped", None)  # one series for it: the running count, train/skipped_steps
        metrics["step_s"] = time.perf_counter() - tick
        self.cost.add(metrics)
        metrics["data_wait_s"] = data_wait
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["skipped_steps"] = float(self.skipped_total)
        self.window.append(metrics)

    def name_first_skip(self, x: torch.Tensor, step: int) -> None:
        """The run's first skipped step, once: which batch row holds NaN/inf, and where to look.

        Batches do not carry their file, so the row is named within this worker's batch and
        ``data validate`` is pointed at for the file and row.
        """
        where = self.cfg.data.path or f"data.synthetic {self.cfg.data.synthetic}"
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        position = self.epochs.position
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            worker_print(
                f"[rfdist] warning: step {step} skipped (non-finite loss or gradient): row {row} of "
                f"worker {self.rank}'s batch {position.batches} in epoch {position.epoch} holds NaN or "
                f"inf; `rfdist data validate {where}` names the file and row",
                flush=True,
            )
        elif self.rank == 0:
            worker_print(
                f"[rfdist] warning: step {step} skipped (non-finite loss or gradient; worker 0's batch "
                f"is finite, another worker's may not be); `rfdist data validate {where}` checks the data",
                flush=True,
            )
        if self.log is not None:
            self.log.tag("rfdist.first_skipped_step", str(step))

    def log_progress(self) -> None:
        """Rank 0, every ``train.log_every`` steps: the window's mean metrics to MLflow and a console line."""
        cfg, step, window = self.cfg, self.step, self.window
        if self.rank != 0 or not (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
            return
        elapsed = time.perf_counter() - self.started
        mean = {k: sum(m[k] for m in window if k in m) / len(window) for k in window[-1]}
        losses = [m["loss"] for m in window if "loss" in m and math.isfinite(m["loss"])]
        skipped = len(window) - len(losses)  # a skipped step's NaN must not hide the others' loss
        mean["loss"] = sum(losses) / len(losses) if losses else math.nan
        mean["examples_per_s"] = self.examples / max(elapsed, 1e-9)
        self.log(mean, step)
        eta = (cfg.train.max_steps - step) * elapsed / max(step - self.first_step, 1)
        worker_print(
            f"[rfdist] step {step}/{cfg.train.max_steps}  loss {mean['loss']:.4f}"
            f"{f' ({skipped} skipped)' if skipped else ''}  "
            f"{mean['examples_per_s']:.0f} ex/s  step {mean['step_s'] * 1000:.0f} ms  "
            f"data wait {mean['data_wait_s'] * 1000:.0f} ms  eta {eta:.0f}s",
            flush=True,
        )
        window.clear()

    # ---------------------------------------------------------------------- validate, checkpoint
    def validate(self) -> float:
        """The validation NLL per row over every rank's shard (all-reduced)."""
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.model.eval()
        with torch.no_grad():
            # the exact likelihood holds d tangents per row at once: validate in training-sized
            # batches (1000-image batches exhausted 24 GB on the MNIST preset with 2 workers)
            for rows in self.val_batches():
                x = self.prep(rows)
                total[0] -= self.model.log_prob(x, chunk_size=self.cfg.estimator.chunk_size).double().sum()
                total[1] += x.shape[0]
        self.model.train()
        if self.world > 1:
            torch.distributed.all_reduce(total)
        if not bool(total[1] > 0):  # an empty val split must not read as a perfect val_nll 0.0
            raise DataFault("the val split gave no rows to validate on: it is empty")
        val_nll = float(total[0] / total[1])
        if self.rank == 0:
            self.log({"val_nll": val_nll}, self.step)
            worker_print(f"[rfdist] step {self.step}  val/nll {val_nll:.4f}", flush=True)
        return val_nll

    def val_batches(self) -> Iterator[torch.Tensor]:
        """This rank's validation rows in training-sized batches, on its device."""
        if self.val_rows is not None:
            for start in range(0, self.val_rows.shape[0], self.per_worker_batch):
                yield self.val_rows[start : start + self.per_worker_batch].to(self.device, non_blocking=True)
            return
        for batch in self.val_shard.iter_torch_batches(
            batch_size=self.per_worker_batch, device=self.device, **self.stream_kw
        ):
            yield batch["x"]

    def evaluate_or_checkpoint(self, x: torch.Tensor) -> None:
        """Validate every ``train.eval_every`` steps; checkpoint every ``train.checkpoint_every`` and at the end."""
        cfg, step = self.cfg, self.step
        checkpoint_now = step % cfg.train.checkpoint_every == 0 or step == cfg.train.max_steps
        if step % cfg.train.eval_every == 0 and not checkpoint_now:  # a validation curve point only
            self.validate()
        if checkpoint_now:  # validated too: checkpoints are ranked by their own val_nll
            self.checkpoint(x)

    def checkpoint(self, x: torch.Tensor) -> None:
        """Validate, then rank 0 saves and reports a checkpoint (the others report its metrics).

        A non-finite val NLL or parameter is reported without a checkpoint and stops the run
        (the last good checkpoint is kept).
        """
        workers = worker_state.gather_worker_states(
            worker_state.capture(self.rank, self.device, self.epochs.position), self.world
        )
        val_nll = self.validate()
        report = {"step": self.step, VAL_NLL: val_nll, SKIPPED_STEPS: float(self.skipped_total),
                  **self.cost.summary()}  # fmt: skip
        healthy = math.isfinite(val_nll) and all(
            bool(torch.isfinite(p).all()) for p in self.model.parameters()
        )
        self.report(report, workers, saved=self.rank == 0 and healthy)
        if self.log is not None and healthy and self.cfg.tracking.checkpoint_plots:
            _log_picture(self.log, self.model, self.spec, self.plot_rows, self.step, val_nll)
        self.saved_any = self.saved_any or healthy
        if not healthy:
            raise FloatingPointError(
                f"validation NLL is not finite at step {self.step}{_fault_hint(x, self.cfg, self.saved_any)}"
            )

    def report(self, report: dict[str, float], workers: list[dict[str, Any]] | None, *, saved: bool) -> None:
        """``ray.train.report`` the metrics, with a checkpoint of the whole state when ``saved``."""
        import ray.train
        from ray.train import Checkpoint

        if not saved:
            ray.train.report(report)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_state(
                directory,
                TrainingState(
                    model=self.model.state_dict(),
                    optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    step=self.step,
                    rng=torch.get_rng_state(),
                    config=self.loop_config["config"],
                    spec=self.loop_config["spec"],
                    metrics=report,
                    workers=workers,
                ),
            )
            ray.train.report(report, checkpoint=Checkpoint.from_directory(directory))

    # ---------------------------------------------------------------------- the loop
    def run(self) -> None:
        """restore → open_streams → (auto estimator) → step, log, validate, checkpoint → close."""
        cfg = self.cfg
        self.restore()
        self.open_streams()
        self.started, self.first_step = time.perf_counter(), self.step
        self.cost = _CostMeter(self.device, previous=self.state.metrics if self.state is not None else None)
        self.saved_any = self.state is not None  # is there a checkpoint to fall back on?
        self.model.train()
        stream = self.batches()
        if cfg.estimator.name == "auto" and cfg.train.mode == "ml":
            self.resolve_estimator(next(stream))
        while self.step < cfg.train.max_steps:
            waiting = time.perf_counter()
            x = next(stream)
            self.train_on(x, data_wait=time.perf_counter() - waiting)
            self.log_progress()
            self.evaluate_or_checkpoint(x)
        self.close()

    def close(self) -> None:
        """Stop the system-metrics monitor; flush the metrics buffered while the tracking server was away."""
        if getattr(self, "monitor", None) is not None:
            from rfdist.runtime.system_metrics import stop_monitor

            stop_monitor(self.monitor)
            self.monitor = None
        if self.log is not None:
            self.log.close()


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: build a :class:`TrainWorker` from the loop config and run it.

    ``loop_config`` keys: ``config`` (the run config as JSON), ``spec``, ``run_id``,
    ``tracking_uri``, ``stats``, ``ray_name``, ``unregistered_checkpoint``, ``train_dataset`` and
    ``val_dataset`` (materialized splits, else ``None``: they stream from Ray Train's dataset
    shards) and ``hooks`` (:class:`WorkerHook` objects).
    """
    worker = TrainWorker(loop_config)
    try:
        worker.run()
    except (DataFault, FloatingPointError) as exc:
        # deterministic (the data, not the machine): a restart would fail the same way, so the
        # fault is recorded on the run and every rank ends without an exception for Ray to retry
        # (each of these faults is raised by every rank at the same step: the loss, gradients and
        # val NLL are all-reduced)
        worker.close()
        record_fault(loop_config, f"{type(exc).__name__}: {exc}", rank=worker.rank)


FAULT_TAG = "rfdist.fault"
"""MLflow run tag holding a deterministic worker fault (``Type: message``); the driver raises it."""


def record_fault(loop_config: dict[str, Any], message: str, *, rank: int) -> None:
    """Rank 0 tags the run with ``message`` (synchronously: the driver reads it once ``fit`` returns)."""
    if rank != 0:
        return
    from mlflow import MlflowClient

    MlflowClient(loop_config["tracking_uri"]).set_tag(loop_config["run_id"], FAULT_TAG, message[:4900])

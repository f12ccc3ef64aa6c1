"""Data-parallel training on Ray Train (``TorchTrainer``, DDP), tracked in MLflow.

The driver (:func:`run_training`) validates everything before any worker starts (config, data
layout, ``d < D``), opens — or, for a re-run with the same name, reopens — one MLflow run, and
builds a ``TorchTrainer`` whose workers run :func:`train_loop_per_worker`: the core
:func:`rfdist.core.engine.train_step` on a DDP-wrapped model (gloo on CPU, nccl on GPU), each worker
computing the volume term on its own device and streaming its shard of the Parquet data.
Rank 0 writes checkpoints (``state.pt``, ``torch.load(weights_only=True)``) and per-step
metrics; after ``fit`` the driver logs the final model, registers it and sets aliases.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rfdist.config import ConfigError, RunConfig
from rfdist.core.builders import ModelSpec, build_model
from rfdist.core.engine import load_optimizer_state, make_optimizer, train_step
from rfdist.runtime import worker_state
from rfdist.runtime.checkpoint import TrainingState, load_state, save_state
from rfdist.runtime.console import quiet_ray_data, quiet_train_reports, start_hints, worker_print
from rfdist.runtime.epochs import EmptyEpochError, EpochStream, epoch_seed, epoch_shard, record_rows

__all__ = [
    "PreparedData",
    "TrainingError",
    "TrainingResult",
    "prepare_data",
    "ray_datasets",
    "run_training",
    "train_loop_per_worker",
]


MATERIALIZE_BYTES = 256 * 1024**2


class TrainingError(RuntimeError):
    """Training failed; the message says why (the last good checkpoint is kept)."""


class DataFault(ValueError):
    """A worker found the data unusable (no full batch, an empty split); the message says which."""


@dataclass
class TrainingResult:
    """What :func:`run_training` returns."""

    run_id: str
    tracking_uri: str
    checkpoint_path: str | None
    metrics: dict[str, float]
    model_version: str | None
    aliases: list[str]
    already_finished: bool = False


# ----------------------------------------------------------------------------------- worker
def _cosine(total: int):
    return lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1)))


def _preprocess_fn(cfg: RunConfig, shape: tuple[int, ...], stats: dict | None):
    """Per-batch preprocessing on the worker's device (flat rows → model input)."""
    from rfdist.data.preprocess import batch_preprocessor

    try:
        return batch_preprocessor(cfg.data.preprocess, shape, lam=cfg.data.logit_lambda, stats=stats)
    except ValueError as exc:
        raise ConfigError(f"data.preprocess: {exc}") from None


def _mlflow_logger(tracking_uri: str, run_id: str):
    """Rank 0's metric sink; a tracking-server outage buffers and retries (:mod:`rfdist.tracking.metric_log`)."""
    from rfdist.tracking.metric_log import MetricLogger

    return MetricLogger(tracking_uri, run_id)


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
        self.steps = int(previous.get("cost_steps", 0))
        self.seconds = float(previous.get("train_time_s", 0.0))
        self.matvecs = float(previous.get("matvecs_per_step", 0.0)) * self.steps
        self.passes = float(previous.get("tangent_passes_per_step", 0.0)) * self.steps

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
            "cost_steps": float(self.steps),
            "train_time_s": self.seconds,
            "s_per_step": self.seconds / steps,
            "matvecs_per_step": self.matvecs / steps,
            "tangent_passes_per_step": self.passes / steps,
            "peak_mem_mb": self.peak_memory_mb(),
        }


def _resolve_auto(
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


def _load_checkpoint(checkpoint: Any, device: torch.device) -> TrainingState:
    with checkpoint.as_directory() as directory:
        return load_state(directory, map_location=device)


def _state_to_resume(
    registered: Any, unregistered: Any, device: torch.device, *, warn: Any = None
) -> TrainingState | None:
    """The newest readable checkpoint: Ray Train's or one it never registered (``None`` if neither).

    Ray Train resumes from the checkpoints its controller registered (its snapshot); a
    checkpoint the worker had written when the driver was stopped (Ctrl-C within a health
    check interval of it) never gets there. The driver finds checkpoints on storage
    (:func:`_storage_checkpoints`, newest first; a single one is accepted too); the newest
    readable one wins when its step is higher. One that has vanished since (``num_to_keep``) is
    ignored; one whose ``state.pt`` is corrupt or truncated is skipped with a warning naming the
    file (``warn``), falling back to the next older one.
    """
    from rfdist.runtime.checkpoint import CHECKPOINT_FILE

    def attempt(checkpoint: Any) -> TrainingState | None:
        try:
            return _load_checkpoint(checkpoint, device)
        except FileNotFoundError:
            return None  # vanished (num_to_keep) or never completed
        except Exception as exc:  # truncated zip, bad pickle, not an rfdist checkpoint
            if warn is not None:
                reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                warn(
                    f"[rfdist] warning: checkpoint {checkpoint.path}/{CHECKPOINT_FILE} is unreadable "
                    f"({reason}); falling back to an older checkpoint"
                )
            return None

    if unregistered is None:
        unregistered = []
    elif not isinstance(unregistered, list | tuple):
        unregistered = [unregistered]
    tried = set()
    state = None
    if registered is not None:
        tried.add(registered.path.rstrip("/"))
        state = attempt(registered)
    for candidate in unregistered:
        if candidate.path.rstrip("/") in tried:
            if state is not None:
                break  # Ray's own checkpoint is the newest readable one on storage
            continue
        tried.add(candidate.path.rstrip("/"))
        loaded = attempt(candidate)
        if loaded is not None:
            if state is None or loaded.step > state.step:
                state = loaded
            break
    return state


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: restore, stream batches, step, validate, checkpoint, report."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    print = worker_print  # each progress line once on the driver (see rfdist.runtime.console)
    quiet_train_reports()
    cfg = RunConfig.model_validate(loop_config["config"])
    spec = ModelSpec.from_dict(loop_config["spec"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed + 1000 * rank)

    model = build_model(spec).to(device)
    optimizer = make_optimizer(model.parameters(), cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(cfg.train.max_steps))
    step = 0
    position = None
    # storage is scanned again at every (re)start: a checkpoint written shortly before a worker
    # crashed may not be registered by Ray's controller yet (the driver's scan predates the run)
    found = _storage_checkpoints(*_storage(cfg.storage.path), loop_config.get("ray_name", cfg.name))
    state = _state_to_resume(
        ray.train.get_checkpoint(),
        found or loop_config.get("unregistered_checkpoint"),
        device,
        warn=(lambda m: print(m, flush=True)) if rank == 0 else None,
    )
    if state is not None:
        model.load_state_dict(state.model)
        load_optimizer_state(optimizer, state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        step = state.step
        position = worker_state.restore(state.workers, rank, world, device)
        if position is None and state.rng is not None and rank == 0:  # older format: rank 0 only
            torch.set_rng_state(state.rng)
        if rank == 0:
            print(f"[rfdist] resumed from checkpoint at step {step}", flush=True)
    ddp_model = ray.train.torch.prepare_model(model)

    shape = tuple(spec.data_shape)
    prep = _preprocess_fn(cfg, shape, loop_config.get("stats"))
    options = cfg.loss_options()
    per_worker_batch = max(1, cfg.train.batch_size // world)
    train_data = loop_config.get("train_dataset")  # materialized: re-ordered per epoch here
    train_shard = ray.train.get_dataset_shard("train") if train_data is None else None
    val_shard = ray.train.get_dataset_shard("val")
    log = _mlflow_logger(loop_config["tracking_uri"], loop_config["run_id"]) if rank == 0 else None
    from rfdist.runtime.system_metrics import start_monitor

    monitor = start_monitor(
        loop_config["run_id"], loop_config["tracking_uri"], enabled=cfg.tracking.system_metrics,
        interval_s=cfg.tracking.system_metrics_interval_s, local_rank=context.get_local_rank(),
        node_id=f"node{context.get_node_rank()}" if context.get_local_world_size() < world else None,
    )  # fmt: skip
    plot_rows = None  # rank 0: the rows drawn beside the model in each checkpoint's picture
    from rfdist.runtime.datasets import stream_options

    stream_kw = stream_options(device)  # rows arrive as stored (uint8 pixels); prep makes them float

    buffer = cfg.data.shuffle_buffer if cfg.data.shuffle and cfg.data.shuffle_buffer > 0 else None

    # with a seeded shuffle buffer, Ray's batch prefetching made the row order differ between a
    # resumed and an uninterrupted run (found by tests/test_train_ray_equivalence.py): no prefetch
    epoch_kw = {k: v for k, v in stream_kw.items() if not (buffer and k == "prefetch_batches")}

    def open_epoch(epoch: int):
        source = train_shard
        if train_data is not None:
            source = epoch_shard(
                train_data, seed=cfg.seed, epoch=epoch, rank=rank, world=world, shuffle=cfg.data.shuffle
            )
        return source.iter_torch_batches(
            batch_size=per_worker_batch,
            device=device,
            drop_last=True,
            local_shuffle_buffer_size=buffer,
            local_shuffle_seed=epoch_seed(cfg.seed, epoch, rank) if buffer else None,
            **epoch_kw,
        )

    epochs = EpochStream(open_epoch, position)
    record = record_rows(cfg.debug.record_rows, rank)

    def batches():
        try:
            for batch in epochs:
                record(epochs.position, batch["x"])
                yield prep(batch["x"])
        except EmptyEpochError:  # drop_last and too few rows: another pass would loop forever
            raise DataFault(
                f"the train split gave worker {rank} no full batch of {per_worker_batch} rows "
                f"(train.batch_size {cfg.train.batch_size} over {world} workers): lower "
                "train.batch_size or add rows"
            ) from None

    def validate() -> float:
        total = torch.zeros(2, dtype=torch.float64, device=device)
        model.eval()
        with torch.no_grad():
            # the exact likelihood holds d tangents per row at once: validate in training-sized
            # batches (1000-image batches exhausted 24 GB on the MNIST preset with 2 workers)
            for batch in val_shard.iter_torch_batches(
                batch_size=per_worker_batch, device=device, **stream_kw
            ):
                x = prep(batch["x"])
                total[0] -= model.log_prob(x, chunk_size=cfg.estimator.chunk_size).double().sum()
                total[1] += x.shape[0]
        model.train()
        if world > 1:
            torch.distributed.all_reduce(total)
        if not bool(total[1] > 0):  # an empty val split must not read as a perfect val_nll 0.0
            raise DataFault("the val split gave no rows to validate on: it is empty")
        return float(total[0] / total[1])

    fail_at = cfg.debug.fail_at_step
    marker = Path(loop_config["fault_marker"])
    consecutive_skips = skipped_total = 0
    window: list[dict[str, float]] = []
    started = time.perf_counter()
    first_step = step
    examples = 0
    cost = _CostMeter(device, previous=state.metrics if state is not None else None)
    saved_any = state is not None  # is there a checkpoint to fall back on?
    model.train()
    stream = batches()
    if cfg.estimator.name == "auto" and cfg.train.mode == "ml":
        options, measured = _resolve_auto(model, next(stream), options, world=world)
        if rank == 0:
            print(
                f"[rfdist] estimator auto → {options.estimator} (a step: exact "
                f"{measured['exact']:.3f} s, hutchinson {measured['hutchinson']:.3f} s)",
                flush=True,
            )
            log({f"auto_{name}_s": value for name, value in measured.items()}, step)
            log.tag("rfdist.estimator", options.estimator)
    while step < cfg.train.max_steps:
        waiting = time.perf_counter()
        x = next(stream)
        data_wait = time.perf_counter() - waiting
        step += 1
        if plot_rows is None and log is not None:
            plot_rows = x[:256].clone()
        if fail_at is not None and step == fail_at and rank == world - 1 and not marker.exists():
            marker.write_text("failed once")
            print(f"[rfdist] injected failure on rank {rank} at step {step}", flush=True)
            os._exit(1)
        tick = time.perf_counter()
        warm = min(1.0, step / cfg.train.warmup_steps) if cfg.train.warmup_steps else None
        frozen = cfg.train.manifold_steps is not None and step > cfg.train.manifold_steps
        if frozen and step == cfg.train.manifold_steps + 1 and rank == 0:
            print(f"[rfdist] step {step}: manifold frozen (train.manifold_steps), the latent density trains on",
                  flush=True)  # fmt: skip
        result = train_step(
            ddp_model, optimizer, x, options, grad_clip=cfg.train.grad_clip, likelihood_weight=warm,
            freeze_manifold=frozen,
        )  # fmt: skip
        scheduler.step()
        examples += x.shape[0] * world
        if result.skipped:
            consecutive_skips += 1
            skipped_total += 1
            if consecutive_skips >= cfg.train.max_consecutive_skips:
                raise FloatingPointError(
                    f"{consecutive_skips} consecutive steps had a non-finite loss or gradient "
                    f"(last at step {step}){_fault_hint(x, cfg, saved_any)}"
                )
        else:
            consecutive_skips = 0
        metrics = dict(result.metrics)
        metrics["step_s"] = time.perf_counter() - tick
        cost.add(metrics)
        metrics["data_wait_s"] = data_wait
        metrics["lr"] = scheduler.get_last_lr()[0]
        metrics["skipped_steps"] = float(skipped_total)
        window.append(metrics)

        if rank == 0 and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
            elapsed = time.perf_counter() - started
            mean = {k: sum(m[k] for m in window if k in m) / len(window) for k in window[-1]}
            mean["examples_per_s"] = examples / max(elapsed, 1e-9)
            log(mean, step)
            eta = (cfg.train.max_steps - step) * elapsed / max(step - first_step, 1)
            print(
                f"[rfdist] step {step}/{cfg.train.max_steps}  loss {mean['loss']:.4f}  "
                f"{mean['examples_per_s']:.0f} ex/s  step {mean['step_s'] * 1000:.0f} ms  "
                f"data wait {mean['data_wait_s'] * 1000:.0f} ms  eta {eta:.0f}s",
                flush=True,
            )
            window.clear()

        checkpoint_now = step % cfg.train.checkpoint_every == 0 or step == cfg.train.max_steps
        if step % cfg.train.eval_every == 0 and not checkpoint_now:  # a validation curve point only
            val_nll = validate()
            if rank == 0:
                log({"val_nll": val_nll}, step)
                print(f"[rfdist] step {step}  val_nll {val_nll:.4f}", flush=True)
        if checkpoint_now:  # validated too: checkpoints are ranked by their own val_nll
            workers = worker_state.gather_worker_states(
                worker_state.capture(rank, device, epochs.position), world
            )
            val_nll = validate()
            report = {
                "step": step,
                "val_nll": val_nll,
                "skipped_steps": float(skipped_total),
                **cost.summary(),
            }
            healthy = math.isfinite(val_nll) and all(
                bool(torch.isfinite(p).all()) for p in model.parameters()
            )
            if rank == 0:
                log({"val_nll": val_nll}, step)
                print(f"[rfdist] step {step}  val_nll {val_nll:.4f}", flush=True)
            if rank == 0 and healthy:
                with tempfile.TemporaryDirectory() as directory:
                    save_state(
                        directory,
                        TrainingState(
                            model=model.state_dict(),
                            optimizer=optimizer.state_dict(),
                            scheduler=scheduler.state_dict(),
                            step=step,
                            rng=torch.get_rng_state(),
                            config=loop_config["config"],
                            spec=loop_config["spec"],
                            metrics=report,
                            workers=workers,
                        ),
                    )
                    ray.train.report(report, checkpoint=Checkpoint.from_directory(directory))
            else:
                ray.train.report(report)
            if log is not None and healthy and cfg.tracking.checkpoint_plots:
                _log_picture(log, model, spec, plot_rows, step, val_nll)
            saved_any = saved_any or healthy
            if not healthy:
                raise FloatingPointError(
                    f"validation NLL is not finite at step {step}{_fault_hint(x, cfg, saved_any)}"
                )
    if monitor is not None:
        monitor.finish()
    if log is not None:
        log.close()  # the metrics buffered while the tracking server was away


def _log_picture(log: Any, model: Any, spec: ModelSpec, rows: Any, step: int, val_nll: float) -> None:
    """Queue the model's picture at a checkpoint (MLflow ``images/``, key ``model``, this step)."""
    from rfdist.eval.plots import model_image

    try:
        image = model_image(model, spec, rows, title=f"step {step} · val NLL {val_nll:.4f}")
    except Exception as exc:  # a picture must never stop training
        worker_print(f"[rfdist] warning: no checkpoint picture at step {step} ({type(exc).__name__}: {exc})", flush=True)
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


def _worker_error(exc: BaseException) -> str:
    """One line for a failed ``fit``: the worker's own exception (``Type: message``), once."""
    cause: BaseException = exc
    while cause.__cause__ is not None:
        cause = cause.__cause__
    failures = getattr(exc, "worker_failures", None) or getattr(cause, "worker_failures", None)
    if failures:
        for failure in failures.values():
            text = str(failure)
            lines = [line for line in text.splitlines() if line.strip()]
            if not lines:
                continue
            if text.lstrip().startswith("Traceback"):  # Ray's wrapper: last line is "Type: message"
                return lines[-1].strip()
            return f"{type(failure).__name__}: {lines[-1].strip()}"  # the worker's exception itself
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}".rstrip(": ")


# ----------------------------------------------------------------------------------- driver
def _loopback_only() -> None:
    """Keep a local Ray instance on 127.0.0.1 (see :func:`rfdist.runtime.cluster.loopback_only`)."""
    from rfdist.runtime.cluster import loopback_only

    loopback_only()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_local_ray(num_cpus: int) -> None:
    """Start a local Ray with ``num_cpus`` logical CPUs, its dashboard on 127.0.0.1.

    Every process of this instance gets ``RAY_API_SERVER_ADDRESS`` (its own dashboard):
    Ray Train's placement-group cleaner otherwise auto-detects the cluster by scanning the
    machine's processes and fails when a second Ray instance runs there (another test, a
    ``ray start`` head), leaving the placement groups of stopped trials behind.
    """
    import ray

    from rfdist.runtime.cluster import private_token

    _loopback_only()
    private_token()
    quiet_ray_data()
    # Ray Train's PreemptionWatcher polls for draining nodes, which a private one-node instance
    # never has; its actor printed a core_worker "constructor arguments in the object store" error
    # line (ray-project/ray#53727) on some runs, which nobody can act on. A user's setting wins.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    dashboard_port = _free_port()
    ray.init(
        # "local": a new private instance even when a `ray start` head runs on this machine
        # (a plain ray.init() would join it through /tmp/ray/ray_current_cluster and then
        # refuse num_cpus)
        address="local",
        num_cpus=num_cpus,
        object_store_memory=768 * 1024**2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}},
        log_to_driver=True,
        logging_level="WARNING",
    )
    os.environ["RFDIST_DASHBOARD_URL"] = f"http://127.0.0.1:{dashboard_port}"  # for the start-up hint
    from ray.data import DataContext

    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def connect_or_start_ray(address: str | None, local_cpus: int) -> None:
    """Join ``address`` (else ``RAY_ADDRESS``) or start a local Ray with ``local_cpus`` logical CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    start_local_ray(local_cpus)


def _dashboard_url() -> str | None:
    """The Ray dashboard URL: the local instance's (set by start_local_ray), else an http(s) ``RAY_ADDRESS``."""
    url = os.environ.get("RFDIST_DASHBOARD_URL") or os.environ.get("RAY_ADDRESS", "")
    return url if url.startswith(("http://", "https://")) else None


def _init_ray(cfg: RunConfig, address: str | None) -> None:
    workers_cpu = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    # Logical CPUs: room for every worker, the train controller and Ray Data's read tasks
    # (on 2 physical cores an exact budget starves Ray Data and hangs silently).
    connect_or_start_ray(address, max(4, math.ceil(workers_cpu) + 2))


def _storage(path: str) -> tuple[str, Any]:
    """``(storage_path, filesystem)`` for RunConfig, through the one storage layer (timeouts, retries)."""
    from rfdist.data.fs import storage_location

    return storage_location(path)


def _storage_checkpoints(storage_path: str, filesystem: Any, name: str) -> list[Any]:
    """Checkpoint folders (with a ``state.pt``) of run ``name`` on storage, newest first.

    Handed to the workers beside Ray Train's own checkpoint (see :func:`_state_to_resume`), so a
    re-run resumes from what the stopped run last wrote, not only from what Ray registered, and
    falls back past a corrupt newest one. Folder names carry their creation time
    (``checkpoint_YYYY-MM-DD_HH-MM-SS.ffffff``).
    """
    import pyarrow.fs
    from ray.train import Checkpoint

    from rfdist.runtime.checkpoint import CHECKPOINT_FILE

    fs = filesystem or pyarrow.fs.LocalFileSystem()
    experiment = f"{storage_path.rstrip('/')}/{name}"
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True))
    except OSError:
        return []
    folders = sorted(
        (
            e.path
            for e in entries
            if e.type == pyarrow.fs.FileType.Directory and e.base_name.startswith("checkpoint_")
        ),
        reverse=True,
    )
    return [
        Checkpoint(path=folder, filesystem=filesystem)
        for folder in folders
        if fs.get_file_info(f"{folder}/{CHECKPOINT_FILE}").type == pyarrow.fs.FileType.File
    ]


def _unregistered_checkpoint(storage_path: str, filesystem: Any, name: str) -> Any:
    """The newest checkpoint folder (with a ``state.pt``) of run ``name``, or ``None``."""
    found = _storage_checkpoints(storage_path, filesystem, name)
    return found[0] if found else None


def materialize_synthetic(cfg: RunConfig, root: str | Path = ".rfdist/data") -> str:
    """Write the synthetic dataset a config names to Parquet once (cached by name/seed/rows)."""
    import numpy as np

    from rfdist.data.parquet import write_dataset
    from rfdist.data.synthetic import make_synthetic

    name = cfg.data.synthetic
    target = Path(root).resolve() / f"{name}-seed{cfg.seed}-{cfg.data.train_rows}-{cfg.data.test_rows}"
    if (target / "_MANIFEST.json").exists() or (target / "_SUCCESS").exists():
        return str(target)
    source = make_synthetic(name)
    val_rows = max(1, cfg.data.test_rows // 2)
    splits = {}
    for offset, (split, rows) in enumerate(
        (("train", cfg.data.train_rows), ("val", val_rows), ("test", cfg.data.test_rows))
    ):
        gen = torch.Generator().manual_seed(cfg.seed + offset)
        splits[split] = {"x": source.sample(rows, generator=gen).numpy().astype(np.float32), "label": None}
    write_dataset(str(target), splits)
    return str(target)


def _latest_run(mlflow, cfg: RunConfig, storage_path: str) -> tuple[Any, Any]:
    """``(experiment, newest run of this job or None)``: runs tagged with its name and storage."""
    from mlflow.entities import ViewType

    from rfdist.tracking.lineage import EXPERIMENT_DESCRIPTION, experiment_name
    from rfdist.tracking.runs import filter_value

    experiment = mlflow.set_experiment(experiment_name(cfg.tracking.experiment))
    if "mlflow.note.content" not in (experiment.tags or {}):
        mlflow.MlflowClient().set_experiment_tag(
            experiment.experiment_id, "mlflow.note.content", EXPERIMENT_DESCRIPTION
        )
    runs = mlflow.search_runs(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"tags.`rfdist.run_name` = {filter_value(cfg.name)} "
        f"and tags.`rfdist.storage` = {filter_value(storage_path)}",
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return experiment, (runs[0] if runs else None)


def finished_step(client: Any, run: Any) -> int | None:
    """The step a FINISHED run ended at (its ``final_val_nll``'s step), else ``None``.

    A run is finished when rfdist closed it as FINISHED after logging the final model; the
    step tells whether a re-run with a larger ``train.max_steps`` still has work to do.
    """
    if run is None or run.info.status != "FINISHED":
        return None
    history = client.get_metric_history(run.info.run_id, "final_val_nll")
    return max((m.step for m in history), default=None)


def _open_run(
    mlflow, cfg: RunConfig, storage_path: str, tags: dict[str, str] | None = None, *, force: bool = False
) -> tuple[str, str]:
    """``(run_id, ray_name)`` of this job: a re-run with the same name continues its run.

    ``ray_name`` is the Ray Train run (checkpoint folder) the MLflow run trains in: ``cfg.name``,
    or a fresh ``NAME-xxxxxxxx`` for ``force`` (retrain from scratch), remembered in the run's tag
    ``rfdist.ray_name`` so that re-runs resume the right folder.
    """
    from rfdist.tracking.lineage import run_tags

    experiment, latest = _latest_run(mlflow, cfg, storage_path)
    previous = latest.data.tags.get("rfdist.ray_name", cfg.name) if latest is not None else cfg.name
    if latest is not None and latest.info.status != "FINISHED" and not force:
        return latest.info.run_id, previous
    ray_name = f"{cfg.name}-{uuid.uuid4().hex[:8]}" if force else previous
    run = mlflow.MlflowClient().create_run(
        experiment.experiment_id,
        run_name=cfg.name,
        tags=run_tags(
            {
                "rfdist.run_name": cfg.name,
                "rfdist.storage": storage_path,
                "rfdist.ray_name": ray_name,
                **(tags or {}),
            }
        ),
    )
    return run.info.run_id, ray_name


def _log_params(mlflow, run_id: str, cfg: RunConfig) -> None:
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    existing = client.get_run(run_id).data.params
    params = [Param(k, str(v)[:500]) for k, v in cfg.flat().items() if k not in existing]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])


@dataclass
class PreparedData:
    """A run's dataset, opened and checked against its config on the driver."""

    path: str
    info: Any
    spec: ModelSpec


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Check config against data before any worker starts; materialise synthetic data once.

    Raises :class:`ConfigError` / ``DataError`` with one line naming the key or file.
    """
    from rfdist.data.errors import DataError
    from rfdist.data.reader import open_dataset

    if cfg.data.synthetic is not None:  # D is known before anything is written
        from rfdist.data.synthetic import make_synthetic

        cfg.model.spec((make_synthetic(cfg.data.synthetic).data_dim,), cfg.seed)
    data_path = cfg.data.path or materialize_synthetic(cfg)
    try:
        info = open_dataset(data_path, features=cfg.data.features)
    except DataError as exc:
        missing = "dataset not found" in str(exc)
        hint = " (make it with `rfdist data make NAME --out PATH`)" if missing else ""
        raise DataError(f"data.path: {exc}{hint}") from None
    spec = cfg.model.spec(tuple(info.shape), cfg.seed)
    for split in ("train", "val"):
        if split not in info.splits:
            raise ConfigError(f"data.path: dataset {data_path} has no {split!r} split")
    return PreparedData(path=data_path, info=info, spec=spec)


def ray_datasets(cfg: RunConfig, prepared: PreparedData) -> dict[str, Any]:
    """The ``train``/``val`` Ray Datasets; held in the object store when small (``data.materialize``).

    Re-streaming a small Parquet dataset every epoch costs more than a training step, so
    datasets under :data:`MATERIALIZE_BYTES` are read once (a sweep reads once for all trials).
    A streamed training split reads its shards in a new seeded order every epoch (``data.shuffle``).
    """
    from rfdist.runtime.datasets import materialize_limit, ray_dataset

    info = prepared.info
    datasets = {split: ray_dataset(info, split) for split in ("train", "val")}
    if cfg.data.materialize != "never":
        rows = [info.rows.get(split) or ds.count() for split, ds in datasets.items()]  # manifest first
        size = sum(rows) * prepared.spec.data_dim * info.itemsize
        if cfg.data.materialize == "always" or size <= materialize_limit(MATERIALIZE_BYTES):
            if cfg.data.shuffle:  # blocks of a batch: the unit each epoch re-orders (rfdist.runtime.epochs)
                datasets["train"] = datasets["train"].repartition(
                    target_num_rows_per_block=cfg.train.batch_size
                )
            return {split: ds.materialize() for split, ds in datasets.items()}
    if cfg.data.shuffle:
        datasets["train"] = ray_dataset(info, "train", file_shuffle_seed=epoch_seed(cfg.seed, 0))
    return datasets


def run_training(
    cfg: RunConfig,
    *,
    address: str | None = None,
    datasets: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    register: bool = True,
    force: bool = False,
) -> TrainingResult:
    """Train per ``cfg`` on Ray Train; log, register and return the result.

    ``datasets``: ready ``train``/``val`` Ray Datasets (a sweep reads them once for all trials);
    ``callbacks`` go to the trainer's ``RunConfig`` (a sweep passes Tune's report callback);
    ``parent_run_id`` makes the MLflow run a child (one per sweep trial); ``register=False``
    logs the model without registering it. A job whose MLflow run is FINISHED at
    ``train.max_steps`` is not trained again (``already_finished``; no new run or version)
    unless ``force``, which trains from scratch in a fresh run.
    """
    import mlflow

    from rfdist.recipes import preflight
    from rfdist.tracking.models import log_flow_model, redact_uri, register_with_aliases, resolve_tracking_uri

    # 1. Everything that can be checked before a worker starts.
    preflight.check_config(cfg)
    preflight.check_storage(cfg.storage.path)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    preflight.check_tracking(tracking_uri)
    prepared = prepare_data(cfg)
    info, spec = prepared.info, prepared.spec
    preflight.check_data(cfg, info)
    storage_path, filesystem = _storage(cfg.storage.path)

    # 2. Tracking.
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    if not force:
        _, latest = _latest_run(mlflow, cfg, cfg.storage.path)
        done = finished_step(mlflow.MlflowClient(), latest)
        if done is not None and done >= cfg.train.max_steps:
            return TrainingResult(
                run_id=latest.info.run_id,
                tracking_uri=tracking_uri,
                checkpoint_path=None,
                metrics={"val_nll": float(latest.data.metrics.get("final_val_nll", math.nan)), "step": done},
                model_version=None,
                aliases=[],
                already_finished=True,
            )
    run_tags = dict(tags or {})
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    run_id, ray_name = _open_run(mlflow, cfg, cfg.storage.path, run_tags, force=force)
    _log_params(mlflow, run_id, cfg)
    from rfdist.tracking.lineage import describe_run

    data_digest = describe_run(run_id, cfg, prepared)
    print(f"[rfdist] MLflow run {run_id} at {redact_uri(tracking_uri)}", flush=True)

    # 3. Ray.
    _init_ray(cfg, address)
    for line in start_hints(tracking_uri, _dashboard_url()):
        print(line, flush=True)
    import ray.train
    from ray.data.dataset import MaterializedDataset
    from ray.train.torch import TorchTrainer

    from rfdist.runtime.rendezvous import LoopbackTorchConfig

    if datasets is None:
        datasets = ray_datasets(cfg, prepared)
    train_dataset = None  # a materialized train split is split per epoch by the workers (rfdist.runtime.epochs)
    if isinstance(datasets.get("train"), MaterializedDataset):
        datasets = dict(datasets)
        train_dataset = datasets.pop("train")
    resources = {"CPU": cfg.scaling.cpus_per_worker}
    if cfg.scaling.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=LoopbackTorchConfig(),  # rendezvous on 127.0.0.1 when all workers run here
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "spec": spec.to_dict(),
            "run_id": run_id,
            "tracking_uri": tracking_uri,
            "stats": getattr(info, "stats", None),
            "fault_marker": str(Path(tempfile.gettempdir()) / f"rfdist-fault-{uuid.uuid4().hex}"),
            "unregistered_checkpoint": _storage_checkpoints(storage_path, filesystem, ray_name),
            "ray_name": ray_name,
            "train_dataset": train_dataset,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=ray_name,
            storage_path=storage_path,
            storage_filesystem=filesystem,
            failure_config=ray.train.FailureConfig(max_failures=cfg.storage.max_failures),
            callbacks=callbacks,
            # Ray Train's INFO lines (worker group, each checkpoint and report) go to its log files
            # under the Ray session's logs/train/; the console keeps rfdist's own step lines
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.storage.keep,
                checkpoint_score_attribute="val_nll",
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
    )
    client = mlflow.MlflowClient()
    try:
        result = trainer.fit()
    except Exception as exc:
        client.set_terminated(run_id, status="FAILED")
        raise TrainingError(f"training run {cfg.name!r} failed: {_worker_error(exc)}") from exc

    # 4. The final model: from the latest checkpoint.
    checkpoint = result.checkpoint
    if checkpoint is None:
        client.set_terminated(run_id, status="FAILED")
        raise TrainingError(f"training run {cfg.name!r} produced no checkpoint")
    with checkpoint.as_directory() as directory:
        state = load_state(directory)
        model = build_model(spec)
        model.load_state_dict(state.model)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_artifact(str(Path(directory) / "state.pt"), artifact_path="checkpoint")
            mlflow.log_dict(cfg.model_dump(mode="json"), "config.yaml")
            from rfdist.data.reader import load_split
            from rfdist.eval.plots import plot_model

            with tempfile.TemporaryDirectory() as tmp:
                sample_data = load_split(info, "val")[:1000]
                prep = _preprocess_fn(cfg, tuple(spec.data_shape), getattr(info, "stats", None))
                plot_model(
                    model, prep(sample_data.reshape(sample_data.shape[0], -1)), Path(tmp) / "model.png",
                    title=f"step {state.step} · val NLL {float(state.metrics.get('val_nll', math.nan)):.4f}",
                )  # fmt: skip
                mlflow.log_artifact(str(Path(tmp) / "model.png"), artifact_path="plots")
            val_nll = float(state.metrics.get("val_nll", float("nan")))
            version, aliases = None, []
            if not math.isfinite(val_nll):
                mlflow.log_metric("final_val_nll", val_nll, step=state.step)
            else:
                registered_name = cfg.registry.name if register else None
                logged = log_flow_model(
                    model, spec, name=cfg.registry.name, registered_model_name=registered_name,
                    input_example=sample_data[:4].reshape(min(4, len(sample_data)), -1).numpy(),
                    preprocess={"kind": cfg.data.preprocess, "lam": cfg.data.logit_lambda,
                                "stats": getattr(info, "stats", None)},
                )  # fmt: skip
                mlflow.log_metric("final_val_nll", val_nll, step=state.step, model_id=logged.model_id)
                mlflow.set_tag("rfdist.model_uri", logged.model_uri)  # MLflow 3: not under runs:/ID
                if registered_name:
                    version = str(logged.registered_model_version)
                    from rfdist.tracking.lineage import describe_version

                    describe_version(client, registered_name, version, val_nll=val_nll, dataset=prepared.path,
                                     digest=data_digest, run_id=run_id)  # fmt: skip
                    aliases = register_with_aliases(
                        cfg.registry.name,
                        version,
                        metric="final_val_nll",
                        value=val_nll,
                        tracking_uri=tracking_uri,
                    )
        checkpoint_path = checkpoint.path
    client.set_terminated(run_id, status="FINISHED")
    return TrainingResult(
        run_id=run_id,
        tracking_uri=tracking_uri,
        checkpoint_path=checkpoint_path,
        metrics={"val_nll": val_nll, "step": float(state.step)},
        model_version=version,
        aliases=aliases,
    )

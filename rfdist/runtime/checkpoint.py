"""Training checkpoints: one ``state.pt`` that loads with ``torch.load(weights_only=True)``.

A checkpoint holds the model and optimizer state, the scheduler state, the step, the torch RNG
state (rank 0's; every rank's RNG and data position under ``workers``) and the resolved config
(as JSON text), so a run resumes exactly where it stopped. Files are written to a temporary
name and renamed, so a crash never leaves a half-written checkpoint.

Which checkpoint a (re)started run resumes from is decided here too: Ray Train's registered
one or a newer one on storage it never registered (:func:`state_to_resume`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHECKPOINT_FILE",
    "TrainingState",
    "checkpoint_uri",
    "load_checkpoint",
    "load_state",
    "save_state",
    "state_to_resume",
    "storage_checkpoints",
    "storage_target",
    "unregistered_checkpoint",
]

CHECKPOINT_FILE = "state.pt"


@dataclass
class TrainingState:
    """What a checkpoint restores."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    step: int
    rng: torch.Tensor | None
    config: dict[str, Any]
    spec: dict[str, Any]
    metrics: dict[str, float]
    workers: list[dict[str, Any]] | None = None  # per rank: RNG states, data position (worker_state)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cpu_workers(workers: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    if workers is None:
        return None
    return [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in w.items()} for w in workers]


def save_state(directory: str | Path, state: TrainingState) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically; returns the file path."""
    path = Path(directory) / CHECKPOINT_FILE
    payload = {
        "format": "rfdist-checkpoint-v1",
        "model": {k: v.detach().cpu() for k, v in state.model.items()},
        "optimizer": state.optimizer,
        "scheduler": state.scheduler,
        "step": int(state.step),
        "rng": None if state.rng is None else state.rng.cpu(),
        "config_json": json.dumps(state.config),
        "spec_json": json.dumps(state.spec),
        "metrics_json": json.dumps(state.metrics),
        "workers": _cpu_workers(state.workers),
    }
    _atomic_torch_save(payload, path)
    return path


def load_state(directory: str | Path, *, map_location: str | torch.device = "cpu") -> TrainingState:
    """Read a checkpoint written by :func:`save_state` (``weights_only=True``: no code runs)."""
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if payload.get("format") != "rfdist-checkpoint-v1":
        raise ValueError(f"{path} is not an rfdist checkpoint")
    return TrainingState(
        model=payload["model"],
        optimizer=payload["optimizer"],
        scheduler=payload["scheduler"],
        step=payload["step"],
        rng=payload["rng"],
        config=json.loads(payload["config_json"]),
        spec=json.loads(payload["spec_json"]),
        metrics=json.loads(payload["metrics_json"]),
        workers=payload.get("workers"),
    )


def storage_target(path: str, storage_options: dict[str, Any] | None = None) -> tuple[str, Any]:
    """``(storage_path, filesystem)`` for Ray Train's RunConfig, through the one storage layer
    (:func:`rfdist.data.fs.storage_location`: timeouts, retries)."""
    from rfdist.data.fs import storage_location

    return storage_location(path, storage_options)


def checkpoint_uri(checkpoint: Any) -> str:
    """A checkpoint's location as the user writes it: ``s3://bucket/…`` on S3 (Ray's
    ``Checkpoint.path`` is relative to its filesystem, without the scheme), else the folder."""
    path = str(checkpoint.path)
    filesystem = getattr(checkpoint, "filesystem", None)
    if getattr(filesystem, "type_name", None) == "s3" and "://" not in path:
        return f"s3://{path.lstrip('/')}"
    return path


def storage_checkpoints(storage_path: str, filesystem: Any, name: str) -> list[Any]:
    """Checkpoint folders (with a ``state.pt``) of run ``name`` on storage, newest first.

    Handed to the workers beside Ray Train's own checkpoint (see :func:`state_to_resume`), so a
    re-run resumes from what the stopped run last wrote, not only from what Ray registered, and
    falls back past a corrupt newest one. Folder names carry their creation time
    (``checkpoint_YYYY-MM-DD_HH-MM-SS.ffffff``).
    """
    import pyarrow.fs
    from ray.train import Checkpoint

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


def unregistered_checkpoint(storage_path: str, filesystem: Any, name: str) -> Any:
    """The newest checkpoint folder (with a ``state.pt``) of run ``name``, or ``None``."""
    found = storage_checkpoints(storage_path, filesystem, name)
    return found[0] if found else None


def load_checkpoint(checkpoint: Any, device: torch.device) -> TrainingState:
    """The :class:`TrainingState` in a Ray ``Checkpoint``, its tensors on ``device``."""
    with checkpoint.as_directory() as directory:
        return load_state(directory, map_location=device)


def state_to_resume(
    registered: Any, unregistered: Any, device: torch.device, *, warn: Any = None
) -> TrainingState | None:
    """The newest readable checkpoint: Ray Train's or one it never registered (``None`` if neither).

    Ray Train resumes from the checkpoints its controller registered (its snapshot); a
    checkpoint the worker had written when the driver was stopped (Ctrl-C within a health
    check interval of it) never gets there. The driver finds checkpoints on storage
    (:func:`storage_checkpoints`, newest first; a single one is accepted too); the newest
    readable one wins when its step is higher. One that has vanished since (``num_to_keep``) is
    ignored; one whose ``state.pt`` is corrupt or truncated is skipped with a warning naming the
    file (``warn``), falling back to the next older one.
    """

    def attempt(checkpoint: Any) -> TrainingState | None:
        try:
            return load_checkpoint(checkpoint, device)
        except FileNotFoundError:
            return None  # vanished (num_to_keep) or never completed
        except Exception as exc:  # truncated zip, bad pickle, not an rfdist checkpoint
            if warn is not None:
                reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                warn(
                    f"[rfdist] warning: checkpoint {checkpoint_uri(checkpoint)}/{CHECKPOINT_FILE} is unreadable "
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

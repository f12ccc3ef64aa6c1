"""Training checkpoints: one ``state.pt`` that loads with ``torch.load(weights_only=True)``.

A checkpoint holds the model and optimizer state, the scheduler state, the step, the torch RNG
state (rank 0's; every rank's RNG and data position under ``workers``) and the resolved config
(as JSON text), so a run resumes exactly where it stopped. Files are written to a temporary
name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CHECKPOINT_FILE", "TrainingState", "load_state", "save_state"]

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

"""Worker hooks for the Ray training tests: inject a fault, record the rows each rank trained on.

They run inside Ray Train workers (:class:`rfdist.runtime.worker.WorkerHook`), which cannot
import this test module: it is registered to be pickled by value, so the hooks travel whole.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import ray.cloudpickle

from rfdist.runtime.console import worker_print
from rfdist.runtime.worker import WorkerHook

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class FailOnce(WorkerHook):
    """Rank ``rank`` kills its process (``os._exit(1)``) at step ``step``, once per ``marker`` file."""

    def __init__(self, step: int, rank: int, marker: str | Path) -> None:
        self.step, self.rank, self.marker = step, rank, str(marker)

    def on_step(self, rank: int, step: int) -> None:
        marker = Path(self.marker)
        if step == self.step and rank == self.rank and not marker.exists():
            marker.write_text("failed once")
            worker_print(f"[rfdist] injected failure on rank {rank} at step {step}", flush=True)
            os._exit(1)


class RecordRows(WorkerHook):
    """Each rank appends every batch's rows and data position to ``folder/rankR.jsonl``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = str(folder)

    def on_batch(self, rank: int, position: Any, batch: Any) -> None:
        path = Path(self.folder) / f"rank{rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"epoch": position.epoch, "batch": position.batches, "rows": batch.detach().cpu().tolist()}
        with path.open("a") as handle:
            handle.write(json.dumps(line) + "\n")


class Poison(WorkerHook):
    """Trains on a copy of batches ``batches`` (0-based, per worker; ``None``: all) whose every other
    row starts with ``value``, and appends a line to ``folder/starts`` when a worker group starts (its first
    batch), so a test can count restarts."""

    def __init__(self, value: float, batches: set[int] | None, folder: str | Path) -> None:
        self.value, self.batches, self.folder = value, batches, str(folder)
        self.seen = 0

    def on_batch(self, rank: int, position: Any, batch: Any) -> None:
        if self.seen == 0 and rank == 0:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            with (Path(self.folder) / "starts").open("a") as handle:
                handle.write("start\n")
        poisoned = None
        if self.batches is None or self.seen in self.batches:
            poisoned = batch.clone()
            poisoned[0::2, 0] = self.value
        self.seen += 1
        return poisoned

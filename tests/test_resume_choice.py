"""Which checkpoint a re-run resumes from: Ray's registered one or a newer one it never saw."""

from __future__ import annotations

from pathlib import Path

import torch
from ray.train import Checkpoint

from rfdist.runtime.checkpoint import (
    TrainingState,
    save_state,
    state_to_resume,
    storage_checkpoints,
    unregistered_checkpoint,
)

CPU = torch.device("cpu")


def _write(folder: Path, step: int) -> Path:
    state = TrainingState(
        model={"w": torch.full((2,), float(step))},
        optimizer=None,
        scheduler=None,
        step=step,
        rng=None,
        config={},
        spec={},
        metrics={"val/nll": 1.0 / step},
    )
    save_state(folder, state)
    return folder


def test_the_newest_complete_checkpoint_folder_is_found(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "vm"
    _write(run / "checkpoint_2026-11-29_06-39-41.367635", 50)
    _write(run / "checkpoint_2026-11-29_06-39-44.668585", 100)
    (run / "checkpoint_2026-11-29_06-39-48.000000").mkdir()  # being written: no state.pt yet
    (run / "checkpoint_manager_snapshot.json").write_text("{}")
    found = unregistered_checkpoint(str(tmp_path / "runs"), None, "vm")
    assert found is not None and found.path.endswith("checkpoint_2026-11-29_06-39-44.668585")
    assert unregistered_checkpoint(str(tmp_path / "runs"), None, "other") is None


def test_the_higher_step_wins_and_a_vanished_folder_is_ignored(tmp_path: Path) -> None:
    older = Checkpoint(path=str(_write(tmp_path / "checkpoint_a", 50)))
    newer = Checkpoint(path=str(_write(tmp_path / "checkpoint_b", 100)))
    gone = Checkpoint(path=str(tmp_path / "checkpoint_deleted"))
    assert state_to_resume(None, None, CPU) is None
    assert state_to_resume(older, None, CPU).step == 50
    assert state_to_resume(None, newer, CPU).step == 100
    assert state_to_resume(older, newer, CPU).step == 100  # Ray never registered step 100
    chosen = state_to_resume(newer, older, CPU)
    assert chosen.step == 100 and torch.equal(chosen.model["w"], torch.full((2,), 100.0))
    assert state_to_resume(older, gone, CPU).step == 50


def test_a_corrupt_newest_checkpoint_is_skipped_with_one_warning(tmp_path: Path) -> None:
    """A truncated newest state.pt (Ray's registered one): warn naming it, take the older one."""
    run = tmp_path / "runs" / "vm"
    _write(run / "checkpoint_2026-11-29_06-39-41.367635", 50)
    newest = _write(run / "checkpoint_2026-11-29_06-39-44.668585", 100) / "state.pt"
    newest.write_bytes(newest.read_bytes()[:500])
    on_storage = storage_checkpoints(str(tmp_path / "runs"), None, "vm")
    assert [Path(c.path).name for c in on_storage] == [
        "checkpoint_2026-11-29_06-39-44.668585",
        "checkpoint_2026-11-29_06-39-41.367635",
    ]
    warnings: list[str] = []
    registered = Checkpoint(path=str(newest.parent))
    chosen = state_to_resume(registered, on_storage, CPU, warn=warnings.append)
    assert chosen is not None and chosen.step == 50
    assert len(warnings) == 1 and f"{newest} is unreadable" in warnings[0], warnings
    warnings.clear()
    assert state_to_resume(None, on_storage, CPU, warn=warnings.append).step == 50
    assert len(warnings) == 1

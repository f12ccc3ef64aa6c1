"""Per-rank state a checkpoint must carry: each rank's RNG streams and its data position.

Every DDP rank draws its own Hutchinson probes (seeded ``seed + 1000·rank``) and reads its own
part of the data, so one rank's state restored on all ranks would make them draw identical
probes after a resume. :func:`gather_worker_states` collects every rank's
:func:`capture` to rank 0 (``all_gather_object``), which stores the list in ``state.pt``
(tensors, ints and strings only: ``torch.load(weights_only=True)`` reads it); on resume each
rank :func:`restore`-s its own entry.
"""

from __future__ import annotations

from typing import Any

import torch

from rfdist.runtime.epochs import DataPosition

__all__ = ["capture", "gather_worker_states", "restore"]


def capture(rank: int, device: torch.device, position: DataPosition) -> dict[str, Any]:
    """This rank's RNG states (CPU; CUDA on a GPU) and data position."""
    state: dict[str, Any] = {
        "rank": rank,
        "rng_cpu": torch.get_rng_state(),
        "epoch": position.epoch,
        "batches": position.batches,
    }
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def gather_worker_states(local: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's :func:`capture`, ordered by rank (a collective: all ranks must call it)."""
    if world == 1:
        return [local]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, local)
    return sorted(gathered, key=lambda s: int(s["rank"]))


def restore(
    states: list[dict[str, Any]] | None, rank: int, world: int, device: torch.device
) -> DataPosition | None:
    """Restore ``rank``'s RNG from a checkpoint's per-rank list; its data position (``None`` if absent).

    A checkpoint written with another world size cannot replay that data split: every rank then
    starts the epoch after the saved one, and a rank without an entry keeps its fresh seed.
    """
    if not states:
        return None
    mine = next((s for s in states if int(s["rank"]) == rank), None)
    if mine is not None:
        torch.set_rng_state(mine["rng_cpu"].cpu())
        if device.type == "cuda" and mine.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(mine["rng_cuda"].cpu(), device)
    if mine is None or len(states) != world:
        return DataPosition(int(states[0]["epoch"]) + 1, 0)
    return DataPosition(int(mine["epoch"]), int(mine["batches"]))

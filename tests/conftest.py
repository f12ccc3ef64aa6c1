"""Shared test fixtures: deterministic seeds and one intra-op thread per test process."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def available_devices() -> list[str]:
    """Devices the math tests run on: always CPU, plus CUDA/MPS when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

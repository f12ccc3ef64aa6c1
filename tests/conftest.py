"""Shared test fixtures: deterministic seeds, one intra-op thread, and per-worker shared services.

Starting a local Ray costs ~12 s on a 2-core machine, so every test that only needs *a* Ray
takes the ``shared_ray`` fixture: one instance per pytest-xdist worker process, started the way
``rfdist`` starts one (:func:`rfdist.runtime.cluster.start_local_ray`) and shared by those tests.
Tests of Ray start-up itself (token files, loopback binding, node loss, a small object store)
start and stop their own and must not take it. One moto S3 server per worker
(``shared_s3``) is started before that Ray, so its workers inherit the endpoint and the test
credentials.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)

SHARED_RAY_CPUS = 8  # logical: a sweep's two concurrent 1-worker trials, or a 2-worker run, plus Ray Data


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


@pytest.fixture(scope="session")
def shared_s3() -> Iterator[str]:
    """One moto S3 server on 127.0.0.1 for this worker process; yields its endpoint.

    Tests share it by using bucket names of their own (:func:`tests.s3_server.make_bucket`).
    """
    from .s3_server import start_moto

    server, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def shared_ray(shared_s3: str) -> Iterator[None]:
    """This worker's local Ray (started on first use, again if a test shut it down).

    Its processes carry the shared moto endpoint and the test credentials
    (:data:`tests.s3_server.CREDENTIALS`), so ``s3://`` paths on ``shared_s3`` work in Ray
    workers. A test that takes this fixture must not call ``ray.shutdown()``.
    """
    from . import s3_server

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or shared_s3 != s3_server.RAY_STARTED_WITH:
        s3_server.start_shared_ray(shared_s3, SHARED_RAY_CPUS)
    yield


def pytest_sessionfinish(session, exitstatus) -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()

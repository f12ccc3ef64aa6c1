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

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

SHARED_RAY_CPUS = 4  # logical, as rfdist sizes its own local Ray (Ray prestarts one idle worker per CPU)


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


@pytest.fixture(autouse=True)
def _mlflow_defaults() -> Iterator[None]:
    """Each test starts from MLflow's default tracking and registry URIs (process-wide state
    that a test setting them would otherwise leave to whichever test the worker runs next).
    ``mlflow.set_*_uri`` also export ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI``: restored too."""
    saved = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    yield
    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session", autouse=True)
def _migrated_mlflow_stores(tmp_path_factory) -> Iterator[None]:
    """A new sqlite MLflow store in this process starts as a copy of one migrated, empty database.

    MLflow creates a store by running its ~50 schema migrations, each committed on its own:
    ~1 CPU-s and 5-7 s of fsync-bound wall time on this machine per store, and the suite makes
    about a hundred (one per test that tracks anything). The copy holds no experiment; the store
    then adds its default experiment with its own artifact root, as on a fresh database.
    Stores that other processes create (``mlflow server``, a CLI subprocess) migrate as usual.
    Without MLflow (the GPU kit runs the core's tests with ``import mlflow`` blocked) nothing is
    installed.
    """
    import shutil
    import sqlite3

    try:
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
    except ImportError:
        yield
        return

    folder = tmp_path_factory.mktemp("mlflow-template")
    template = folder / "mlflow.db"
    TrackingStore(f"sqlite:///{template}", str(folder / "artifacts")).engine.dispose()
    with sqlite3.connect(template) as db:
        db.execute("DELETE FROM experiments")
    db.close()

    def from_template(init):
        def wrapped(self, db_uri, *args, **kwargs):
            path = db_uri.removeprefix("sqlite:///") if db_uri.startswith("sqlite:///") else None
            fresh = path and path != ":memory:" and not os.path.exists(path)
            if fresh and os.path.isdir(os.path.dirname(os.path.abspath(path))):
                shutil.copyfile(template, path)
            return init(self, db_uri, *args, **kwargs)

        return wrapped

    saved = TrackingStore.__init__, RegistryStore.__init__
    TrackingStore.__init__ = from_template(saved[0])
    RegistryStore.__init__ = from_template(saved[1])
    yield
    TrackingStore.__init__, RegistryStore.__init__ = saved


@pytest.fixture
def ray_tripwire(monkeypatch) -> None:
    """Starting (or joining) Ray through rfdist fails the test: for input that must be refused first."""

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started: the bad input was not caught up front")

    monkeypatch.setattr("rfdist.runtime.cluster.init_ray", tripwire)
    monkeypatch.setattr("rfdist.recipes.sweep._init_ray", tripwire)
    monkeypatch.setattr("rfdist.runtime.cluster.connect_or_start_ray", tripwire)


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

    if not s3_server.shared_ray_is_up(shared_s3):
        s3_server.start_shared_ray(shared_s3, SHARED_RAY_CPUS)
    yield


def pytest_sessionfinish(session, exitstatus) -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


DURATIONS = Path(__file__).with_name("durations.json")  # seconds per test id, from a recorded run
UNKNOWN_SLOW_S, UNKNOWN_S = 60.0, 1.0  # the guess for a test the record does not know yet


def _expected_seconds(item: pytest.Item, record: dict[str, float]) -> float:
    if item.nodeid in record:
        return record[item.nodeid]
    return UNKNOWN_SLOW_S if item.get_closest_marker("slow") else UNKNOWN_S


def _module_scoped_fixtures(item: pytest.Item) -> bool:
    """Whether the test uses a module-scoped fixture (whose set-up its module should pay once)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    return any(
        defs[-1].scope == "module" for name in info.names_closure if (defs := info.name2fixturedefs.get(name))
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first, and a module's tests together when they share a module-scoped fixture.

    With ``--dist loadgroup`` (scripts/test.sh) every other test is its own unit of work, so two
    workers finish together when the longest units start first (greedy longest-processing-time
    scheduling); expected times come from ``tests/durations.json``.
    """
    record = json.loads(DURATIONS.read_text()) if DURATIONS.is_file() else {}
    module_seconds: dict[str, float] = {}
    for item in items:
        if "shared_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)  # a Ray instance: never the fast tier
        if _module_scoped_fixtures(item):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
            module_seconds[item.module.__name__] = module_seconds.get(item.module.__name__, 0.0)
            module_seconds[item.module.__name__] += _expected_seconds(item, record)

    def unit_seconds(item: pytest.Item) -> float:
        group = item.get_closest_marker("xdist_group")
        if group is not None and group.args and group.args[0] in module_seconds:
            return module_seconds[group.args[0]]
        return _expected_seconds(item, record)

    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (-unit_seconds(item), order[id(item)]))
    if getattr(config.option, "loadgroup", False):  # an xdist worker of --dist loadgroup
        _suffix_groups(items)


def _suffix_groups(items: list[pytest.Item]) -> None:
    """Give grouped tests xdist's ``NODEID@GROUP`` ids, which its scheduler sends to one worker.

    pytest-xdist 3.8 renames them by setting ``item._nodeid``; since pytest 9 a node's id is read
    from ``item._id``, so that rename does nothing and each test of a module with a module-scoped
    fixture ran on whichever worker was free, paying the fixture once per worker (measured: the
    sphere model trained twice, 44 s each). The same rename here, through pytest 9's ``NodeId``;
    under an older pytest (no ``_id``) xdist's own rename works and this does nothing.
    """
    if not hasattr(items[0] if items else None, "_id"):
        return
    from _pytest.nodeid import NodeId

    for item in items:
        mark = item.get_closest_marker("xdist_group")
        if mark is not None and mark.args and "@" not in item.nodeid:
            item._id = NodeId.parse(f"{item.nodeid}@{mark.args[0]}")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """With ``RFDIST_RECORD_DURATIONS=1``, write each passed test's seconds (set-up, call and
    teardown) to tests/durations.json, which orders the next runs."""
    if not os.environ.get("RFDIST_RECORD_DURATIONS"):
        return
    seconds: dict[str, float] = {}
    failed: set[str] = set()
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            nodeid = report.nodeid.split("@")[0]  # without --dist loadgroup's "@group" suffix
            seconds[nodeid] = seconds.get(nodeid, 0.0) + report.duration
            if report.failed or report.skipped:
                failed.add(nodeid)
    kept = {k: round(v, 2) for k, v in sorted(seconds.items()) if k not in failed}
    DURATIONS.write_text(json.dumps(kept, indent=0) + "\n")

"""Every Ray internal rfdist relies on (rfdist.runtime.ray_internals, ray_data_logging.yaml) still
exists and behaves as assumed: a Ray upgrade that changes one fails here, naming it."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rfdist.runtime import ray_internals

YAML = Path(ray_internals.__file__).with_name("ray_data_logging.yaml")


def _load(dotted: str, user: str = "rfdist.runtime.ray_internals"):
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"Ray internal {dotted} is gone ({exc}): update {user}")


def test_auth_setup_logger_is_the_one_that_warns_about_opting_out() -> None:
    """The token-auth notice cluster.private_token filters goes through auth_setup_logger()."""
    setup = _load(f"{ray_internals.AUTH_SETUP_LOGGER}.logger")
    assert setup is ray_internals.auth_setup_logger(), "Ray's token-auth setup logs elsewhere now"
    warn = _load(f"{ray_internals.AUTH_SETUP_LOGGER}._warn_token_auth_enabled")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    # rfdist's own filter (cluster.private_token, run by earlier tests in this process) would
    # drop the very record this test looks for: look at Ray's logger as Ray leaves it
    filters, level, disabled = list(setup.filters), setup.level, setup.disabled
    setup.filters, setup.disabled = [], False
    setup.setLevel(logging.WARNING)
    setup.addHandler(handler)
    try:
        warn()
    finally:
        setup.removeHandler(handler)
        setup.filters, setup.disabled = filters, disabled
        setup.setLevel(level)
    assert any("RAY_AUTH_MODE=disabled" in r.getMessage() for r in records), (
        "Ray's token-auth notice no longer names RAY_AUTH_MODE=disabled: rfdist.runtime.cluster's filter misses it"
    )


def test_single_machine_constant_is_what_ray_reads_for_the_node_ip(monkeypatch) -> None:
    """ENABLE_RAY_CLUSTER is read at call time by get_node_ip_address; False means 127.0.0.1."""
    constants = importlib.import_module(ray_internals.CLUSTER_CONSTANTS_MODULE)
    services = importlib.import_module("ray._private.services")
    assert constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    assert isinstance(constants.ENABLE_RAY_CLUSTER, bool), "Ray dropped ray_constants.ENABLE_RAY_CLUSTER"
    assert services.ray_constants is constants, "get_node_ip_address no longer reads ray_constants"
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)
    # in a fresh process: a Ray node running in this one (the worker's shared Ray) fixes its IP
    probe = (
        "import importlib\n"
        "from rfdist.runtime import ray_internals\n"
        "constants = importlib.import_module(ray_internals.CLUSTER_CONSTANTS_MODULE)\n"
        "services = importlib.import_module('ray._private.services')\n"
        "constants.ENABLE_RAY_CLUSTER = True\n"
        "ray_internals.keep_loaded_ray_single_machine()\n"
        "assert constants.ENABLE_RAY_CLUSTER is False\n"
        "assert services.get_node_ip_address() == services.get_localhost_ip()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ray_data_logging_reapplies_the_config_file(monkeypatch) -> None:
    """configure_logging reads RAY_DATA_LOGGING_CONFIG when called: rfdist's file puts the
    ray.data console handler at WARNING with rfdist's filter, and a file handler beside it."""
    internal = importlib.import_module("ray.data._internal.logging")
    assert internal.RAY_DATA_LOGGING_CONFIG_ENV_VAR_NAME == "RAY_DATA_LOGGING_CONFIG"
    from rfdist.runtime.console import RayDataConsoleFilter

    logger = logging.getLogger("ray.data")
    saved = (logger.level, list(logger.handlers), logger.propagate)
    monkeypatch.setenv("RAY_DATA_LOGGING_CONFIG", str(YAML))
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    try:
        ray_internals.apply_ray_data_logging()
        console = [h for h in logger.handlers if h.name == "console"]
        assert len(console) == 1 and console[0].level == logging.WARNING
        assert any(isinstance(f, RayDataConsoleFilter) for f in console[0].filters)
        assert any(h.name == "file" for h in logger.handlers)
        assert logger.level == logging.DEBUG and logger.propagate is False
    finally:
        monkeypatch.delenv("RAY_DATA_LOGGING_CONFIG")
        logger.setLevel(saved[0])
        logger.handlers[:] = saved[1]
        logger.propagate = saved[2]


def test_ray_data_logging_yaml_names_importable_classes() -> None:
    """Each class path in ray_data_logging.yaml imports and is built as the YAML builds it."""
    config = yaml.safe_load(YAML.read_text())
    for name, spec in config["filters"].items():
        factory = _load(spec["()"], YAML.name)
        assert callable(factory().filter), f"filter {name}: {spec['()']} has no filter()"
    for name, spec in config["handlers"].items():
        cls = _load(spec["class"], YAML.name)
        assert issubclass(cls, logging.Handler), f"handler {name}: {spec['class']} is not a Handler"
        kwargs = {k: v for k, v in spec.items() if k not in {"class", "level", "formatter", "filters"}}
        cls(**kwargs).close()  # Ray passes the remaining keys to the constructor
    hidden = _load("ray.data._internal.logging.HiddenRecordFilter")()
    record = logging.LogRecord("ray.data", logging.WARNING, __file__, 1, "x", None, None)
    assert hidden.filter(record)
    record.hide = True
    assert not hidden.filter(record), "HiddenRecordFilter no longer drops records with hide=True"


def test_train_report_logger_is_where_ray_train_reports_checkpoints() -> None:
    """Ray Train V2 logs "Reporting training result" under a logger named by its file path."""
    context = _load("ray.train.v2._internal.execution.context")
    logger = ray_internals.train_report_logger()
    assert logger is not None, "ray.train.v2._internal.execution.context no longer imports"
    assert context.logger is logger, "Ray Train's execution context logs under another logger now"
    assert "Reporting training result" in inspect.getsource(context), (
        "Ray Train no longer logs that line there"
    )


def test_refresh_ray_config_makes_ray_see_a_new_auth_mode(monkeypatch) -> None:
    """Config.initialize("") re-reads RAY_AUTH_MODE into the cached RayConfig."""
    raylet = importlib.import_module("ray._raylet")
    mode = raylet.get_authentication_mode
    initial = os.environ.get("RAY_AUTH_MODE")
    try:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        ray_internals.refresh_ray_config()
        assert mode() == raylet.AuthenticationMode.TOKEN, "RAY_AUTH_MODE=token not seen after the refresh"
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        ray_internals.refresh_ray_config()
        assert mode() != raylet.AuthenticationMode.TOKEN, "RAY_AUTH_MODE=disabled not seen after the refresh"
    finally:
        monkeypatch.undo()
        assert os.environ.get("RAY_AUTH_MODE") == initial
        ray_internals.refresh_ray_config()  # back to this process's own settings


def test_ray_data_logging_yaml_follows_rays_own_default() -> None:
    """rfdist's YAML is Ray Data's default config with a quieter console: same classes, same file."""
    default = _load("ray.data._internal.logging.DEFAULT_CONFIG", YAML.name)
    ours = yaml.safe_load(YAML.read_text())
    assert ours["filters"]["console_filter"] == default["filters"]["console_filter"]
    for name in ("file", "console"):
        assert ours["handlers"][name]["class"] == default["handlers"][name]["class"], (
            f"Ray's {name} handler changed"
        )
    assert ours["handlers"]["file"]["filename"] == default["handlers"]["file"]["filename"]
    assert ours["formatters"]["ray"] == default["formatters"]["ray"]
    assert set(ours["loggers"]) == set(default["loggers"]) == {"ray.data"}

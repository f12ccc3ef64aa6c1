"""The CLI's help reads as plain text, lists every subcommand, and offers --tracking-uri where MLflow is used.

Walks the typer app as click sees it (no process, no Ray, no MLflow).
"""

from __future__ import annotations

import re
from typing import Any

import typer.main
from typer.testing import CliRunner

from rfdist.cli.main import app

runner = CliRunner()
# commands that read or write an MLflow store
MLFLOW_COMMANDS = ["train", "sweep", "eval", "score", "models list", "models show", "models promote"]


def _commands() -> list[tuple[str, Any]]:
    out = []

    def walk(prefix: str, command: Any) -> None:
        out.append((prefix, command))
        if hasattr(command, "commands"):  # a group (typer's own classes, not click's)
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)

    walk("", typer.main.get_command(app))
    return out


def _help(path: str) -> str:
    result = runner.invoke(app, [*path.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_help_has_no_type_metavars_nor_rest_markup() -> None:
    for path, _ in _commands():
        text = _help(path)
        assert "``" not in text and ":mod:" not in text and ":func:" not in text, (path, text)
        assert "`" not in text, (path, [ln for ln in text.splitlines() if "`" in ln])
        metavars = re.findall(r"<[a-z][a-z_\[\], |]*>", text)
        assert not metavars, (path, metavars)


def test_group_help_lists_every_subcommand() -> None:
    for path, command in _commands():
        if hasattr(command, "commands") and path:
            text = _help(path)
            for name in command.commands:
                assert re.search(rf"^\W*{re.escape(name)}\b", text, re.M), (path, name, text)
    assert "status" in _help("jobs").split("Commands")[0]  # the group's one-line summary too


def test_submit_target_help_names_every_kind() -> None:
    text = " ".join(_help("submit").split())
    for kind in ("train", "sweep", "eval", "score"):
        assert kind in text.split("TARGET", 1)[1], kind


def test_every_mlflow_command_takes_tracking_uri() -> None:
    commands = dict(_commands())
    for path in MLFLOW_COMMANDS:
        options = {opt for p in commands[path].params for opt in p.opts}
        assert "--tracking-uri" in options, path


def test_tracking_uri_flag_wins_over_config_and_set() -> None:
    # train/sweep turn --tracking-uri into the last override, after the config file and --set
    from rfdist.cli.main import _with_tracking
    from rfdist.config import load_config

    cfg = load_config(None, _with_tracking(["tracking.uri=sqlite:///a.db"], "sqlite:///b.db"))
    assert cfg.tracking.uri == "sqlite:///b.db"
    odd = "http://host:5000/a #x: y"  # YAML would read a bare `#…` as a comment
    assert load_config(None, _with_tracking(None, odd)).tracking.uri == odd
    assert _with_tracking(["x=1"], None) == ["x=1"]

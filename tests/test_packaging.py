"""Packaging: every imported distribution is declared, ranges in pyproject with exact pins beside
them, and the config presets shipped in the package (``rfdist presets list|copy``)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from typer.testing import CliRunner

from rfdist.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
runner = CliRunner()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules() -> dict[str, str]:
    """``{module: first file importing it}`` over every ``import`` in the rfdist package (also in functions)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "rfdist").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_imported_third_party_module_is_declared() -> None:
    declared = {_norm(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    for extra in PYPROJECT["project"].get("optional-dependencies", {}).values():
        declared |= {_norm(Requirement(r).name) for r in extra}
    dists = importlib.metadata.packages_distributions()
    missing = {}
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module in ("rfdist", "__future__"):
            continue
        owners = {_norm(d) for d in dists.get(module, [module])}
        if not owners & declared:
            missing[module] = (sorted(owners), where)
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def test_dependencies_are_ranges_and_constraints_pin_each_exactly() -> None:
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    assert not [str(r) for r in requirements if any(s.operator in ("==", "===") for s in r.specifier)]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            pin = Requirement(line)
            (spec,) = pin.specifier
            assert spec.operator == "==", line
            pins[_norm(pin.name)] = spec.version
    for req in requirements:
        version = pins.get(_norm(req.name))
        assert version is not None, f"constraints.txt has no pin for {req.name}"
        assert req.specifier.contains(version, prereleases=True), f"{req.name}=={version} is outside {req}"
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-c constraints.txt" in setup


def test_presets_are_package_data() -> None:
    assert PYPROJECT["tool"]["setuptools"]["package-data"]["rfdist.presets"] == ["*.yaml"]


def test_presets_list_names_every_preset() -> None:
    result = runner.invoke(app, ["presets", "list"])
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.splitlines()]
    assert listed == sorted(p.stem for p in (ROOT / "rfdist" / "presets").glob("*.yaml"))
    assert "von-mises" in listed and "sweep-von-mises" in listed


def test_presets_copy_writes_the_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    result = runner.invoke(app, ["presets", "copy", "von-mises", str(tmp_path)])
    assert result.exit_code == 0, result.output
    copied = tmp_path / "von-mises.yaml"
    assert copied.read_text() == (ROOT / "rfdist" / "presets" / "von-mises.yaml").read_text()
    again = runner.invoke(app, ["presets", "copy", "von-mises", str(copied)])
    assert again.exit_code == 2 and "error: " in again.output and "--force" in again.output
    assert runner.invoke(app, ["presets", "copy", "von-mises", str(copied), "--force"]).exit_code == 0
    assert [p.name for p in tmp_path.iterdir()] == ["von-mises.yaml"]  # no temporary file left


def test_presets_copy_of_an_unknown_name_lists_the_presets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["presets", "copy", "no-such", str(tmp_path)])
    assert result.exit_code == 2 and "error: no preset 'no-such'" in result.output
    assert "von-mises" in result.output and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["von-mises", "sphere", "sweep-von-mises"])
def test_a_preset_name_works_where_a_config_path_does(name: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no file of that name here
    result = runner.invoke(app, ["config", name])
    assert result.exit_code == 0, result.output
    assert f"name: {name}" in result.output


def test_a_preset_name_submits_as_the_uploaded_preset_file() -> None:
    from rfdist.recipes.submit import build_job

    spec = build_job("train", "von-mises", overrides=["train.max_steps=10"], working_dir=ROOT,
                     address="http://127.0.0.1:1")  # fmt: skip
    assert spec.entrypoint.startswith("python jobs/train.py rfdist/presets/von-mises.yaml")

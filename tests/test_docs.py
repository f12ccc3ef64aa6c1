"""The docs site's generated pages cover the code, and the pages name only tests that exist.

The full `mkdocs build --strict` runs in scripts/test.sh; these checks are the fast part: the CLI
reference lists every command and option of the typer app, the config reference every field of
every section, every bench JSON under docs/perf/ renders with its date, machine and command, and
every `test_bad_input[ID]` named in the reliability page is a real case.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import typer
import typer.main

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hook():
    return _load(ROOT / "docs" / "hooks" / "generate.py", "docs_generate_hook")


def _commands(command, ctx):
    yield command, ctx
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            yield from _commands(sub, typer.Context(sub, info_name=name, parent=ctx))


def test_cli_reference_lists_every_command_and_option(hook) -> None:
    from rfdist.cli.main import app

    page = hook.cli_reference()
    root = typer.main.get_command(app)
    seen = 0
    for command, ctx in _commands(root, typer.Context(root, info_name="rfdist")):
        heading = f" `{ctx.command_path}`\n"
        assert heading in page, ctx.command_path
        section = page.split(heading, 1)[1].split("\n#", 1)[0]  # up to the next command's heading
        for param in command.get_params(ctx):
            if param.param_type_name == "option" and param.name != "help":
                assert all(opt in section for opt in param.opts), (ctx.command_path, param.opts)
        seen += 1
    for path in (
        "rfdist data make",
        "rfdist train",
        "rfdist sweep",
        "rfdist eval",
        "rfdist score",
        "rfdist models promote",
        "rfdist submit",
        "rfdist jobs logs",
    ):
        assert f"`{path}`" in page
    assert seen >= 18


def test_config_reference_lists_every_field_with_its_default(hook) -> None:
    from pydantic import BaseModel

    from rfdist.config import RunConfig

    page = hook.config_reference()
    for name, field in RunConfig.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            section = page.split(f"## `{name}`", 1)[1].split("\n## ", 1)[0]
            for key, sub in field.annotation.model_fields.items():
                row = next((line for line in section.splitlines() if line.startswith(f"| `{key}` |")), None)
                assert row is not None, f"{name}.{key}"
                if sub.default_factory is None:
                    assert f"`{json.dumps(sub.default)}`" in row, (f"{name}.{key}", row)
        else:
            assert f"| `{name}` |" in page
    assert "| `cg_tol` | float | `0.0001` | ≥ 0 |" in page
    assert '"exact" \\| "hutchinson" \\| "auto"' in page


def test_every_bench_json_renders_with_its_provenance() -> None:
    perf = _load(ROOT / "scripts" / "perf_pages.py", "perf_pages")
    files = sorted((ROOT / "docs" / "perf").glob("*.json"))
    assert files
    for path in files:
        text = perf.render(path.name)
        for field in ("date", "machine", "command"):
            assert f"- **{field}**:" in text, (path.name, field)
        records, _ = perf.load(path)
        assert text.count("\n| ") == len(records) + 1, path.name  # header + one row per record
    pages = "".join(p.read_text() for p in (ROOT / "docs" / "perf").glob("*.md"))
    for path in files:
        assert f"perf-table: {path.name}" in pages, f"{path.name} is on no page"
    with pytest.raises(ValueError, match="no record matches"):
        perf.render(files[0].name, {"shape": "no-such-shape"})


def test_the_docs_name_no_issue_numbers() -> None:
    pages = [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md"]
    for page in pages:
        if page.name == "results.md":  # written by scripts/reproduce.py
            continue
        assert not re.search(r"\bissues? ?#?\d+|issue-?\d+", page.read_text(), re.I), page
    assert not list(ROOT.joinpath("docs", "perf").glob("*issue*"))


def test_reliability_page_names_real_bad_input_cases() -> None:
    page = (ROOT / "docs" / "guide" / "reliability.md").read_text()
    source = (ROOT / "tests" / "test_bad_input.py").read_text()
    named = set(re.findall(r"test_bad_input\[([\w-]+)\]", page)) | set(re.findall(r"`\[([\w-]+)\]`", page))
    assert len(named) > 30
    missing = [case for case in sorted(named) if f'"{case}"' not in source and f"'{case}'" not in source]
    assert not missing, missing

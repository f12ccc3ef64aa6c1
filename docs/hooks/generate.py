"""mkdocs hook: the reference pages and benchmark tables, generated from the code at build time.

- ``reference/cli.md``: every command of the typer app ``rfdist.cli.main:app`` (usage, help,
  arguments and options), walked through ``typer.main.get_command``;
- ``reference/config.md``: every section of :class:`rfdist.config.RunConfig` (its docstring and a
  table of fields: type, default, constraints, description) from the pydantic model classes;
- pages under ``perf/``: each ``<!-- perf-table: FILE -->`` line becomes the table of that bench
  JSON with its machine, command and date (``scripts/perf_pages.py``).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import typer
import typer.main
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
ROLE = re.compile(r":(?:class|func|mod|data|meth|attr|obj):`~?([^`]+)`")


def rst_to_md(text: str) -> str:
    """Docstring text as markdown: Sphinx roles become inline code (double backticks already are)."""
    return ROLE.sub(r"`\1`", inspect.cleandoc(text or ""))


def table_cell(text: str) -> str:
    """Text fit for one markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


# --- the CLI --------------------------------------------------------------------------------------


def _params_table(command: Any, ctx: typer.Context) -> list[str]:
    """Arguments and options as ``--help`` shows them (click's ``get_help_record``)."""
    rows = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is None or param.name == "help":
            continue
        names, help_text = record
        kind = "argument" if param.param_type_name == "argument" else "option"
        rows.append(f"| `{table_cell(names)}` | {kind} | {table_cell(rst_to_md(help_text))} |")
    if not rows:
        return []
    return ["| name | kind | what |", "|---|---|---|", *rows, ""]


def click_help_to_md(text: str) -> str:
    """A command's help as markdown: click's ``\\b`` paragraphs (kept line by line) become code blocks."""
    paragraphs = inspect.cleandoc(text or "").split("\n\n")
    out = [
        "```\n" + p.removeprefix("\b\n") + "\n```" if p.startswith("\b\n") else rst_to_md(p)
        for p in paragraphs
    ]
    return "\n\n".join(out)


def _command_section(command: Any, ctx: typer.Context, depth: int) -> list[str]:
    path = ctx.command_path
    lines = [f"{'#' * min(depth, 6)} `{path}`", ""]
    if command.help:
        lines += [click_help_to_md(command.help), ""]
    lines += ["```", command.get_usage(ctx), "```", ""]
    lines += _params_table(command, ctx)
    if hasattr(command, "list_commands"):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            lines += _command_section(sub, typer.Context(sub, info_name=name, parent=ctx), depth + 1)
    return lines


def cli_reference() -> str:
    """Markdown for every command of ``rfdist.cli.main:app``."""
    from rfdist.cli.main import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="rfdist")
    intro = [
        "# CLI reference",
        "",
        "Generated from the typer app `rfdist.cli.main:app` when the site is built; the same text",
        "as `rfdist COMMAND --help`. Every command turns bad input into one `error: …` line on",
        "stderr: exit 2 for bad usage, config or data, exit 1 for a runtime failure.",
        "",
    ]
    return "\n".join(intro + _command_section(root, ctx, 2))


# --- the config schema ----------------------------------------------------------------------------


def type_name(annotation: Any) -> str:
    """A field's type as a reader would write it: ``int | null``, ``"auto" | "always"``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list[{', '.join(type_name(a) for a in args if a is not Ellipsis)}]"
    if origin is dict:
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    if hasattr(value, "model_dump"):
        return "(section)"
    return f"`{json.dumps(value)}`"


def _constraints(field: Any) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    parts = []
    for item in field.metadata:
        for attr, symbol in symbols.items():
            if getattr(item, attr, None) is not None:
                parts.append(f"{symbol} {getattr(item, attr)}")
    return ", ".join(parts)


def field_description(name: str, field: Any, doc: str, names: list[str]) -> str:
    """``Field(description=…)``, else what the class docstring says of ``name``.

    The docstrings of the config sections describe fields as ``name``: text; that text runs to
    the next such definition or the paragraph's end. Else the first sentence naming the field.
    """
    if field.description:
        return field.description
    others = "|".join(re.escape(n) for n in names)
    definition = re.compile(
        rf"``{re.escape(name)}``(?:\s*\([^)]*\))?:\s*(.+?)(?=``(?:{others})``(?:\s*\([^)]*\))?:|\n\s*\n|\Z)",
        re.S,
    )
    match = definition.search(doc)
    if match:
        return match.group(1).strip().rstrip(";")
    for sentence in re.split(r"(?<=[.])\s+|\n\s*\n", doc):
        if f"``{name}``" in sentence:
            return sentence.strip()
    return ""


def _fields_table(model: Any) -> list[str]:
    doc = model.__doc__ or ""
    names = list(model.model_fields)
    rows = ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        description = table_cell(rst_to_md(field_description(name, field, doc, names)))
        rows.append(
            f"| `{name}` | {table_cell(type_name(field.annotation))} | {_default(field)} "
            f"| {_constraints(field)} | {description} |"
        )
    return [*rows, ""]


def config_reference() -> str:
    """Markdown for every section and field of ``rfdist.config.RunConfig``."""
    from pydantic import BaseModel

    from rfdist.config import RUN_NAME, RunConfig

    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `rfdist/config.py` when the site is built. A config",
        "is YAML with the sections below; any key can be overridden with `--set section.key=value`,",
        "and `rfdist config FILE --set …` prints the resolved config. Unknown keys, wrong types and",
        "values outside the constraints are refused with one line naming the key.",
        "",
        "## Top level",
        "",
        rst_to_md(RunConfig.__doc__ or ""),
        "",
    ]
    sections = []
    top = type("TopLevel", (), {})
    top.__doc__ = RunConfig.__doc__
    top_fields = {}
    for name, field in RunConfig.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            sections.append((name, annotation))
        else:
            top_fields[name] = field
    top.model_fields = top_fields
    lines += _fields_table(top)
    lines += [
        f"`name` must match `{RUN_NAME.pattern}` (it becomes a folder, a Ray run name and an MLflow tag).",
        "",
    ]
    for name, model in sections:
        lines += [f"## `{name}`", "", f"Class `{model.__module__}.{model.__qualname__}`.", ""]
        lines += [rst_to_md(model.__doc__ or ""), "", *_fields_table(model)]
    return "\n".join(lines)


# --- the hook -------------------------------------------------------------------------------------

GENERATED = {"reference/cli.md": cli_reference, "reference/config.md": config_reference}


def _perf_pages() -> Any:
    spec = importlib.util.spec_from_file_location("perf_pages", ROOT / "scripts" / "perf_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config: Any) -> Files:
    """Add the generated reference pages to the site."""
    for src_uri, render in GENERATED.items():
        files.append(File.generated(config, src_uri, content=render()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Expand the perf-table markers of the benchmark pages."""
    if page.file.src_uri.startswith("perf/") and "<!-- perf-table:" in markdown:
        return _perf_pages().expand(markdown, Path(config["docs_dir"]) / "perf")
    return markdown

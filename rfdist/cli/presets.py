"""``rfdist presets list|copy``: the config presets shipped in the wheel (as torchtune's ``tune ls``/``tune cp``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from rfdist import presets
from rfdist.cli._help import PlainCommand, PlainGroup

presets_app = typer.Typer(
    cls=PlainGroup, help="The config presets shipped with rfdist: list, copy.", no_args_is_help=True
)


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@presets_app.command("list", cls=PlainCommand)
def presets_list() -> None:
    """Every preset: its name (usable as CONFIG, e.g. rfdist train von-mises) and what it is."""
    rows = presets.names()
    width = max(len(n) for n in rows)
    for name in rows:
        about = presets.summary(name)
        typer.echo(f"{name:<{width}}  {about[:90] + '…' if len(about) > 90 else about}".rstrip())


@presets_app.command("copy", cls=PlainCommand)
def presets_copy(
    name: Annotated[str, typer.Argument(help="Preset name (see: rfdist presets list).")],
    dest: Annotated[
        Path | None, typer.Argument(help="File or folder to write (default: ./NAME.yaml).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy preset NAME to DEST to edit it; then: rfdist train DEST."""
    source = presets.find(name)
    if source is None:
        _fail(f"no preset {name!r}; the presets: {', '.join(presets.names())}")
    target = dest if dest is not None else Path(source.name)
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        _fail(f"{target} exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        _fail(f"{target.parent}: no such folder")
    # atomic: a reader never sees half a config (temporary file in the same folder, then rename)
    handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(handle)
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    typer.echo(f"copied preset {name!r} to {target}")

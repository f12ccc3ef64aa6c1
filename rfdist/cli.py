"""The ``rfdist`` command line.

Every command turns bad input into one ``error: …`` line on stderr and a non-zero exit
(no traceback); ``--set key=value`` overrides any config key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from .config import ConfigError, load_config
from .data.cli import data_app

app = typer.Typer(
    help="Rectangular normalizing flows: data, training, sweeps, evaluation and the model registry.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path | None, typer.Argument(help="YAML config (default: built-in von-mises).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="Override a config key: key=value.")]


def fail(message: str, code: int = 2) -> None:
    """Print one error line and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    config: ConfigArg = None,
    set_: SetOpt = None,
    local: Annotated[bool, typer.Option("--local", help="Train in this process, without Ray.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics as JSON.")] = None,
) -> None:
    """Train a rectangular flow from CONFIG and print its test metrics."""
    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        fail(str(exc))
    from .runner import run_local

    try:
        _, metrics = run_local(cfg)
    except (ConfigError, FloatingPointError) as exc:
        fail(str(exc))
    except Exception as exc:  # data-layer errors carry their own clear message
        if type(exc).__name__ == "DataError":
            fail(str(exc))
        raise
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        typer.echo(f"{key:<{width}}  {value:.6g}")
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2))


@app.command("config")
def show_config(config: ConfigArg = None, set_: SetOpt = None) -> None:
    """Validate CONFIG (with overrides) and print the resolved YAML."""
    import yaml

    try:
        cfg = load_config(config, set_)
    except ConfigError as exc:
        fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(), sort_keys=False))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

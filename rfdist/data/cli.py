"""`rfdist data …` commands (placeholder until the data layer lands)."""

from __future__ import annotations

import typer

data_app = typer.Typer(help="Make and validate Parquet datasets.", no_args_is_help=True)

"""The ``rfdist`` command (typer): ``data``, ``train``, ``sweep``, ``eval``, ``score``, ``models``,
``submit``, ``jobs``. Commands join the recipes below them; nothing here computes."""

from rfdist.cli.main import app, main

__all__ = ["app", "main"]

"""Plain ``--help`` for every rfdist command: value words (``TEXT``, ``INTEGER``, ``PATH``) instead of
typer's Python type metavars (``<bool>``, ``<list[str]>``, ``<path>``), nothing after a flag.

Typer renders a parameter's type with its ``display_type_rich``; the command classes below give
each parameter of theirs a plain one when click asks a command for its parameters (``get_params``),
so the rich help, the plain help and the generated CLI reference all show the same words.
Use ``typer.Typer(cls=PlainGroup)`` and ``@app.command(cls=PlainCommand)``.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

__all__ = ["PlainCommand", "PlainGroup"]

_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "bool": ""}


def _word(param: Any, ctx: Any) -> str:
    """The value word of ``param``: its metavar, else one from its type; ``""`` for flags and arguments."""
    if (
        param.param_type_name == "argument"
        or getattr(param, "is_flag", False)
        or getattr(param, "count", False)
    ):
        return ""  # an argument is shown by its name (CONFIG), a flag takes no value
    if param.metavar is not None:
        return param.metavar
    shown = str(param.display_type(ctx)).strip("<>")
    inner = shown.removeprefix("list[").removesuffix("]")
    return _WORDS.get(inner, inner.upper() if "|" not in inner else inner)


def _plain(params: list[Any], ctx: Any) -> list[Any]:
    for param in params:
        if not getattr(param, "_rfdist_plain", False):
            if param.param_type_name == "argument" and param.metavar is None:
                param.metavar = param.name.upper()  # as click writes arguments: CONFIG, MODEL_URI
            word = _word(param, ctx)
            param.display_type_rich = lambda ctx, word=word: word
            param._rfdist_plain = True
    return params


class PlainCommand(TyperCommand):
    """A typer command whose help shows plain value words."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx), ctx)


class PlainGroup(TyperGroup):
    """A typer group whose help (``--version``, ``--install-completion`` …) shows plain value words."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain(super().get_params(ctx), ctx)

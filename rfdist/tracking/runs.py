"""MLflow runs: finding the runs rfdist made (by name, by parent) and quoting filter values."""

from __future__ import annotations

from rfdist.config import ConfigError

__all__ = ["filter_value"]


def filter_value(value: str) -> str:
    """``value`` quoted for an MLflow filter string (``'…'``, or ``"…"`` when it holds a ``'``)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ConfigError(f"{value!r}: an MLflow filter value cannot hold both ' and \" characters")

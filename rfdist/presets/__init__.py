"""The config presets shipped with rfdist: ``rfdist presets list``, ``rfdist presets copy NAME``.

Each preset is a YAML config in this package (``von-mises.yaml``, ``mnist.yaml``, …), installed
with the wheel, so a pip-installed user has them too. A preset's name works wherever a config
path does (``rfdist train von-mises``); a file of that name in the current folder wins.
Standard library only: the CLI lists and copies presets without importing torch.

Example:
    >>> "von-mises" in names()
    True
    >>> find("von-mises").name, find("no-such-preset")
    ('von-mises.yaml', None)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["find", "names", "summary"]

HOME = Path(__file__).resolve().parent


def names() -> list[str]:
    """Every preset's name (its file name without ``.yaml``), sorted."""
    return sorted(p.stem for p in HOME.glob("*.yaml"))


def find(name: str) -> Path | None:
    """The file of preset ``name`` (``von-mises`` or ``von-mises.yaml``), else ``None``."""
    stem = name.removesuffix(".yaml")
    if not stem or "/" in stem or "\\" in stem or stem.startswith("."):
        return None
    path = HOME / f"{stem}.yaml"
    return path if path.is_file() else None


def summary(name: str) -> str:
    """The first comment line of preset ``name`` (what it is), else ``""``."""
    path = find(name)
    for line in path.read_text().splitlines() if path else []:
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""

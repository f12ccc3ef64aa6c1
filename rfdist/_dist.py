"""The distribution's name and installed version, standard library only (``rfdist --version`` needs no torch)."""

from __future__ import annotations

__all__ = ["DIST_NAME", "dist_version"]

DIST_NAME = "rfdist-flows"
"""The distribution name on the package index (``rfdist`` there is somebody else's project)."""


def dist_version() -> str:
    """This project's installed version (``rfdist.__version__`` from a plain checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DIST_NAME)
    except PackageNotFoundError:
        from rfdist import __version__

        return __version__

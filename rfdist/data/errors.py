"""The data layer's one error type: its message is a single line meant for the user."""

import re


class DataError(Exception):
    """A dataset problem, naming the file/split/column/row and what was expected."""


class StorageUnreachable(DataError):
    """The data's storage could not be reached (network, endpoint): a runtime failure, not bad
    input, so the CLI exits 1 for it (2 is for input the user must change)."""


def arrow_reason(exc: Exception) -> str:
    """Arrow's reason without its "Could not open Parquet input source '<path>':" preamble."""
    if isinstance(exc, FileNotFoundError):  # pyarrow's message is the bare path
        return "No such file or directory"
    text = " ".join(str(exc).split())
    detail = re.search(r"Detail: \[errno \d+\] ([^.]+)", text)
    if detail:  # the OS's reason (no such file, a symlink loop, permission) beats "Failed to open"
        return detail.group(1).strip()[:160]
    if text.startswith("Could not open Parquet input source") and "': " in text:
        text = text.split("': ", 1)[1]
    return text.split(". ")[0][:160]

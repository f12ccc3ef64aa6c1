"""The data layer's one error type: its message is a single line meant for the user."""


class DataError(Exception):
    """A dataset problem, naming the file/split/column/row and what was expected."""

"""Errors that reach the user as one line on stderr.

Exit codes (documented in the README): 2 for usage and input errors, 1 for other failures,
130 after Ctrl-C, 141 when the reader of stdout went away (as `yes | head` does).
"""

from __future__ import annotations

import click


class InputError(click.ClickException):
    """The user's input (a file, a record, a flag value) is wrong: exit code 2."""

    exit_code = 2

    def __init__(self, message: str, source: str | None = None, line: int | None = None) -> None:
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(where + message)


class StError(click.ClickException):
    """Something failed that is not the input's fault: exit code 1."""

    exit_code = 1

"""Errors the library raises: plain exceptions, with a message a user can act on.

The command line prints each as one line on stderr and exits with its `exit_code` (documented in
the README): 2 for usage and input errors, 1 for other failures; 130 after Ctrl-C and 141 when the
reader of stdout went away are the command line's own. Messages name options as the command line
spells them (`--cache-dir`); `str(error)` names them as Python keyword arguments (`cache_dir=`),
so that the same advice reads right in a notebook.
"""

from __future__ import annotations

import re

# Filled in by st.options: every command-line flag and the keyword argument it stands for.
FLAG_NAMES: dict[str, str] = {}
_FLAG = re.compile(r"(?<![\w-])(--?[a-z][a-z0-9-]*)( (?=[\d'\"]))?")


def python_spelling(message: str) -> str:
    def keyword(match: re.Match[str]) -> str:
        name = FLAG_NAMES.get(match.group(1))
        return f"{name}=" if name else match.group(0)

    return _FLAG.sub(keyword, message)


class StError(Exception):
    """Something failed that is not the input's fault: exit code 1."""

    exit_code = 1

    def __init__(self, message: str, source: str | None = None, line: int | None = None) -> None:
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        self.message = where + message
        super().__init__(self.message)

    def __str__(self) -> str:
        from st import options  # noqa: F401 - fills FLAG_NAMES

        return python_spelling(self.message)


class InputError(StError):
    """The user's input (a file, a record, an option's value) is wrong: exit code 2."""

    exit_code = 2


class UsageError(InputError):
    """Options that do not go together, or a value out of its range: exit code 2, and the command
    line points to `--help`."""

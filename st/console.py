"""Everything that is not data goes to stderr: messages, warnings, progress bars."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

_state = {"quiet": False}
# rich already honours NO_COLOR and drops colour when stderr is not a terminal.
err = Console(stderr=True, highlight=False, force_terminal=True if os.environ.get("ST_FORCE_TERMINAL") else None)


def set_quiet(quiet: bool) -> None:
    _state["quiet"] = quiet


def info(message: str) -> None:
    if not _state["quiet"]:
        err.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    # Warnings are shown even with -q: they say something about the data.
    err.print(f"st: warning: {message}", markup=False, style="yellow", soft_wrap=True)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, n)

    def finish(self) -> None:
        """Blank lines and skipped documents count toward the total without being encoded."""
        if self._progress is not None and self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, completed=task.total if task.total is not None else task.completed)


@contextmanager
def progress(description: str, total: int | None = None, unit: str = "docs") -> Iterator[_Bar]:
    """A progress bar on stderr; it never touches sys.stdout (stdout carries data only)."""
    # Off a terminal (a log file, a CI job) rich could only draw the bar once, at the end; the
    # closing summary line says as much, and an error stays the one line it is.
    if _state["quiet"] or not err.is_terminal:
        yield _Bar(None, None)
        return
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, redirect_stdout=False, redirect_stderr=False, transient=False) as p:
        yield _Bar(p, p.add_task(description, total=total))


def status(message: str) -> AbstractContextManager[object]:
    """A spinner on stderr for work without a count (nothing with -q or off a terminal)."""
    return nullcontext() if _state["quiet"] or not err.is_terminal else err.status(message, spinner="dots")

"""The command line's stderr: the library's log messages as lines, its progress as rich bars.

Everything that is not data goes to stderr. Off a terminal (a log file, a CI job) rich could only
draw a bar once, at the end; there the closing summary line says as much, and an error stays the
one line it is.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bars

from st.progress import Progress, log

# rich already honours NO_COLOR and drops colour when stderr is not a terminal.
err = Console(stderr=True, highlight=False, force_terminal=True if os.environ.get("ST_FORCE_TERMINAL") else None)
_state = {"quiet": False}


def quiet() -> bool:
    return _state["quiet"]


class _Lines(logging.Handler):
    """Info as it is (not with -q); warnings, shown even with -q, as `st: warning: ...`."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            err.print(f"st: warning: {message}", markup=False, style="yellow", soft_wrap=True)
        elif not _state["quiet"]:
            err.print(message, markup=False, soft_wrap=True)


class ProgressBars:
    """A progress callback that draws each task as a bar (a spinner for work without a count)."""

    def __init__(self) -> None:
        self.tasks: dict[str, tuple[Any, Any]] = {}

    def __call__(self, event: Progress) -> None:
        if _state["quiet"] or not err.is_terminal:
            return
        shown = self.tasks.get(event.task)
        if shown is None:
            if event.finished:
                return
            if not event.unit:
                spinner = err.status(event.task, spinner="dots")
                spinner.start()
                self.tasks[event.task] = (spinner, None)
                return
            columns = [
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(event.unit),
                TimeRemainingColumn(),
            ]
            bars = Bars(*columns, console=err, redirect_stdout=False, redirect_stderr=False, transient=False)
            bars.start()
            shown = self.tasks[event.task] = (bars, bars.add_task(event.task, total=event.total))
        widget, task_id = shown
        if task_id is not None:
            widget.update(task_id, completed=event.done, total=event.total)
        if event.finished:
            widget.stop()
            del self.tasks[event.task]


def install(quiet: bool = False) -> ProgressBars:
    """Route the library's messages to stderr; returns the progress callback."""
    _state["quiet"] = quiet
    if not any(isinstance(h, _Lines) for h in log.handlers):
        log.addHandler(_Lines())
    log.setLevel(logging.INFO)
    log.propagate = False
    return ProgressBars()


def set_quiet(value: bool) -> None:
    _state["quiet"] = value

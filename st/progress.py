"""How long work reports itself: progress events to an optional callback, messages to `logging`.

The library never prints. Work with a count (documents encoded, epochs trained) sends `Progress`
events to the callback in effect (`reporting(callback)`, or the `progress=` argument of the API's
functions); messages and warnings go to the `st` logger. The command line turns both into rich
progress bars and lines on stderr; a notebook may pass `print`, or nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

log = logging.getLogger("st")


@dataclass(frozen=True)
class Progress:
    """One step of a task: `done` of `total` `unit`s (total None: unknown; unit "": no count)."""

    task: str
    done: int
    total: int | None
    unit: str
    finished: bool = False


Callback = Callable[[Progress], None]
_callback: ContextVar[Callback | None] = ContextVar("st_progress", default=None)


@contextmanager
def reporting(callback: Callback | None) -> Iterator[None]:
    """Send the progress of the work inside to `callback` (None: keep the one in effect)."""
    if callback is None:
        yield
        return
    token = _callback.set(callback)
    try:
        yield
    finally:
        _callback.reset(token)


class Task:
    def __init__(self, name: str, total: int | None, unit: str) -> None:
        self.name, self.total, self.unit, self.done = name, total, unit, 0
        self._callback = _callback.get()
        self._send()

    def _send(self, finished: bool = False) -> None:
        if self._callback is not None:
            self._callback(Progress(self.name, self.done, self.total, self.unit, finished))

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._send()

    def finish(self) -> None:
        """Blank lines and skipped documents count toward the total without being worked on."""
        if self.total is not None:
            self.done = max(self.done, self.total)
        self._send(finished=True)


@contextmanager
def task(name: str, total: int | None = None, unit: str = "docs") -> Iterator[Task]:
    t = Task(name, total, unit)
    try:
        yield t
    finally:
        t._send(finished=True)


def status(name: str) -> AbstractContextManager[Task]:
    """Work without a count (loading a model, starting Ray)."""
    return task(name, None, "")


def info(message: str) -> None:
    log.info(message)


def warn(message: str) -> None:
    log.warning(message)

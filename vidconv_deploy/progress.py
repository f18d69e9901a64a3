"""The progress bar of long loops (training epochs, scoring videos, export steps), with the time left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def progress_bar() -> Progress:
    """The bar every long loop shows (on stderr, so stdout stays clean for JSON)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)


#: Opens a sub-task (description, total or None) on a bar; yields ``advance(n)``. A step's inner loop
#: (calibration under the export bar) reports through one, so two live bars never fight over the terminal.
Subtask = Callable[[str, "int | None"], AbstractContextManager[Callable[[int], None]]]


def subtasks(progress: Progress) -> Subtask:
    """Sub-tasks shown as extra rows of ``progress`` (with their own ETA), removed when they end."""

    @contextmanager
    def subtask(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = progress.add_task(description, total=total, info="")
        try:
            yield lambda n=1: progress.advance(task, n)
        finally:
            progress.remove_task(task)

    return subtask


@contextmanager
def no_subtask(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A :data:`Subtask` that shows nothing (library calls and tests)."""
    yield lambda n=1: None

"""rich progress bars for long CLI work (written to stderr so stdout stays machine-readable)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar() -> Progress:
    """A progress bar on stderr; silent when stderr is not a terminal (CI logs stay clean)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


@contextmanager
def counting_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar for work that reports ``(done, total)``; yields that callback."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=None, info="")

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield on_progress

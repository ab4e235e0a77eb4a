"""Progress bars (rich) for anything longer than a few seconds."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class _TrainingBar:
    """A live bar on a terminal; a plain line every ~5 % of the steps otherwise (logs, CI)."""

    def __init__(self, progress: Progress, task: int, label: str, total: int, done: int):
        self._progress = progress
        self._task = task
        self._label = label
        self._total = total
        self._step = done
        self._every = max(1, total // 20)

    def advance(self, parts: dict[str, float], tokens_per_s: float, lr: float) -> None:
        """One optimizer step done; `parts` are the loss terms to show (`loss` first)."""
        self._step += 1
        terms = "  ".join(f"{name} {value:.4g}" for name, value in parts.items())
        self._progress.update(self._task, advance=1, terms=terms, tps=f"{tokens_per_s:.0f}", lr=f"{lr:.2e}")
        if not console.is_terminal and (self._step % self._every == 0 or self._step == self._total):
            console.print(
                f"{self._label} step {self._step}/{self._total} {terms} "
                f"{tokens_per_s:.0f} answer-tok/s lr {lr:.2e}",
                highlight=False,
            )


@contextlib.contextmanager
def training_progress(label: str, total: int, done: int = 0) -> Iterator[_TrainingBar]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[terms]}  {task.fields[tps]} tok/s  lr {task.fields[lr]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        task = progress.add_task(label, total=total, completed=done, terms="-", tps="-", lr="-")
        yield _TrainingBar(progress, task, label, total, done)


@contextlib.contextmanager
def task_progress(label: str, total: int) -> Iterator[Progress]:
    """A plain bar; call `bar.advance(task_id)` through the yielded (progress, task) pair."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        progress.add_task(label, total=total)
        yield progress

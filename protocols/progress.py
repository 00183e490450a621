"""One progress bar for every long loop: campaigns, transfers, training steps (the training
package and the CLI use this one too).

A thin layer over rich so each loop shows the same columns (done / total, pulses where they
count, the current device, elapsed time, ETA), and so tests and pipes can switch it off.
"""

from __future__ import annotations


class Bar:
    """A rich progress bar, or nothing when `enabled` is false (tests, pipes)."""

    def __init__(self, title: str, total: int | None, done: int = 0, *, enabled: bool = True,
                 unit: str = "devices", pulses: bool = True):
        self.p = None
        self.pulses = 0
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn(unit)]
        if pulses:
            cols.append(TextColumn("{task.fields[pulses]} pulses"))
        cols += [TextColumn("{task.fields[where]}"), TimeElapsedColumn(), TextColumn("ETA"),
                 TimeRemainingColumn()]
        self.p = Progress(*cols)
        self.task = self.p.add_task(title, total=total, completed=done, pulses=0, where="")

    def __enter__(self) -> Bar:
        if self.p is not None:
            self.p.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def current(self, where: str) -> None:
        """Say what is being worked on now (e.g. "device (2,3)")."""
        if self.p is not None:
            self.p.update(self.task, where=where)

    def advance(self, pulses: int = 0) -> None:
        """One more unit done, which took `pulses` pulses."""
        self.pulses += pulses
        if self.p is not None:
            self.p.update(self.task, advance=1, pulses=self.pulses)

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the count done, and the total when given (fits `train(progress=...)`'s
        callback; a training that stopped early closes its bar with total = steps run)."""
        if self.p is not None:
            self.p.update(self.task, completed=completed,
                          **({} if total is None else {"total": total}))

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
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column

        # The bar, the count and the ETA must survive an 80-column terminal: they never shrink;
        # the description and the current device share what is left, cut with an ellipsis.
        width = Console().width
        narrow = width < 110
        fixed = {"table_column": Column(no_wrap=True)}
        essential = ((10 if narrow else 24) + 9 + len(unit) + (14 if pulses else 0)
                     + (0 if narrow else 8) + 12 + 8)
        room = max(width - essential, 8)

        def text(fmt: str, share: float) -> TextColumn:
            return TextColumn(fmt, table_column=Column(no_wrap=True, overflow="ellipsis",
                                                       max_width=max(int(room * share), 4)))

        cols = [text("[bold]{task.description}", 0.55),
                BarColumn(bar_width=10 if narrow else 24, **fixed),
                MofNCompleteColumn(**fixed), TextColumn(unit, **fixed)]
        if pulses:
            cols.append(TextColumn("{task.fields[pulses]} pulses", **fixed))
        cols.append(text("{task.fields[where]}", 0.45))
        if not narrow:
            cols.append(TimeElapsedColumn(**fixed))
        cols += [TextColumn("ETA", **fixed), TimeRemainingColumn(**fixed)]
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

"""Progress of the operator commands (export, import, prune), on stderr: on a terminal a rich
progress bar per phase (counts, rate, ETA); in a pipe or a log, a plain line every few seconds.
Either way a summary table at the end."""

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from gateway.data.transfer import Tally

PLAIN_INTERVAL_SECONDS = 5.0


class Phase:
    """One phase's counter: `advance` it; `note` sets the text shown beside the count."""

    def __init__(self, reporter: "Reporter", name: str, total: float | None, unit: str) -> None:
        self.reporter, self.name, self.total, self.unit = reporter, name, total, unit
        self.done = 0.0
        self.note = ""
        self.started = time.monotonic()
        self._last_line = self.started
        self._task = (
            None if reporter.progress is None else reporter.progress.add_task(name, total=total, note="")
        )

    def advance(self, amount: float = 1, note: str | None = None) -> None:
        self.done += amount
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self.reporter.progress is not None and self._task is not None:
            self.reporter.progress.update(self._task, advance=amount, note=self.note)
            return
        if now - self._last_line >= self.reporter.interval:
            self._last_line = now
            self.reporter.line(self._status(now))

    def _status(self, now: float) -> str:
        of = f" of {self.total:,.0f}" if self.total is not None else ""
        return f"{self.name}: {self.done:,.0f}{of} {self.unit}{', ' + self.note if self.note else ''}"

    def rate(self, count: float) -> float:
        """`count` things done since the phase started, per second."""
        return count / max(time.monotonic() - self.started, 1e-9)

    def finish(self) -> None:
        if self.reporter.progress is None:
            self.reporter.line(self._status(time.monotonic()))


class Reporter:
    """Where progress goes: rich bars when `stream` is a terminal, else plain lines."""

    def __init__(self, stream: TextIO | None = None, *, interval: float = PLAIN_INTERVAL_SECONDS) -> None:
        self.stream = stream or sys.stderr
        self.interval = interval
        self.console = Console(file=self.stream)
        self.progress: Progress | None = None
        if self.stream.isatty():
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TaskProgressColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )

    @contextmanager
    def running(self) -> Iterator["Reporter"]:
        if self.progress is None:
            yield self
            return
        with self.progress:
            yield self

    def phase(self, name: str, *, total: float | None = None, unit: str = "items") -> Phase:
        return Phase(self, name, total, unit)

    def line(self, text: str) -> None:
        print(f"gateway: {text}", file=self.stream, flush=True)

    def totals(self, title: str, counts: dict[str, int]) -> None:
        """A final line of counts, e.g. what an export wrote."""
        self.line(f"{title}: " + ", ".join(f"{count:,} {kind}" for kind, count in counts.items()))

    def summary(self, title: str, tallies: dict[str, Tally]) -> None:
        """The final table: per kind, created / updated / unchanged / failed."""
        table = Table(title=title, title_justify="left")
        for heading in ("", "created", "updated", "unchanged", "failed"):
            table.add_column(heading, justify="left" if not heading else "right")
        for kind, tally in tallies.items():
            table.add_row(
                kind,
                *(f"{value:,}" for value in (tally.created, tally.updated, tally.unchanged, tally.failed)),
            )
        if self.progress is not None:
            self.console.print(table)
            return
        # In a pipe: one line a kind, easy to grep.
        self.line(title)
        for kind, tally in tallies.items():
            self.line(
                f"  {kind}: {tally.created} created, {tally.updated} updated, "
                f"{tally.unchanged} unchanged, {tally.failed} failed"
            )

"""Progress of a long benchmark run, wherever its output goes.

On a terminal: a rich progress bar. Elsewhere (CI logs, `nohup`, a pipe), where a bar prints
nothing useful: a plain line every `every_s` seconds and one at the end, e.g.

    replay lru: 1,234/5,000 requests (24.7%), 12s elapsed, about 37s left

    with Progress("replay lru", total=len(requests), unit="requests") as progress:
        for request in requests:
            ...
            progress.advance()
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    def __init__(
        self,
        description: str,
        total: int,
        unit: str = "items",
        stream: TextIO | None = None,
        every_s: float = 5.0,
        terminal: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self._every = every_s
        self._clock = clock
        self._started = self._last = clock()
        self._shown = -1  # `done` when the last line was printed
        terminal = self._stream.isatty() if terminal is None else terminal
        self._bar: RichProgress | None = None
        if terminal:
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self._stream),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._shown != self.done:
            self._line()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.advance(self._task, n)
            return
        now = self._clock()
        if now - self._last >= self._every:
            self._last = now
            self._line()

    def _line(self) -> None:
        self._shown = self.done
        elapsed = self._clock() - self._started
        text = f"{self.description}: {self.done:,}/{self.total:,} {self.unit}"
        if self.total:
            text += f" ({100 * self.done / self.total:.1f}%)"
        text += f", {elapsed:.0f}s elapsed"
        if 0 < self.done < self.total:
            text += f", about {elapsed / self.done * (self.total - self.done):.0f}s left"
        print(text, file=self._stream, flush=True)

"""Moves between tiers: the copy itself, a priority queue of scheduled jobs, and per-link
bandwidth accounting (bytes and seconds per tier pair, so the policy can plan with the link
speed this machine actually reaches).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kvstore.clock import Clock
from kvstore.index import BlockEntry
from kvstore.tiers.base import Tier


@dataclass(slots=True)
class LinkStats:
    moves: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def bandwidth(self) -> float | None:
        """Measured bytes/s, or None before the first timed move."""
        return self.bytes / self.seconds if self.seconds > 0 else None


@dataclass(order=True, slots=True)
class Job:
    """Work the policy scheduled: a prefetch, an eager offload, a fan-out's expiry."""

    not_before: float
    priority: int  # lower runs first among jobs that are due
    seq: int
    run: Callable[[], object] = field(compare=False)
    label: str = field(compare=False, default="")


class Mover:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.links: dict[tuple[str, str], LinkStats] = {}
        self._queue: list[Job] = []
        self._seq = itertools.count()

    def copy(self, entry: BlockEntry, src: Tier, dst: Tier, staged: BlockEntry, data: Any = None) -> None:
        """Copy entry's bytes from src into `staged` (already allocated in dst), then free src.

        `data`, when given, is the block's bytes already read (a get that promotes), saving a read.
        """
        started = time.perf_counter()
        dst.write(staged, src.read(entry) if data is None else data)
        elapsed = time.perf_counter() - started
        src.free(entry)
        link = self.links.setdefault((src.name, dst.name), LinkStats())
        link.moves += 1
        link.bytes += entry.size
        link.seconds += elapsed

    def schedule(
        self, run: Callable[[], object], not_before: float | None = None, priority: int = 10, label: str = ""
    ) -> Job:
        at = self.clock.now() if not_before is None else not_before
        job = Job(at, priority, next(self._seq), run, label)
        heapq.heappush(self._queue, job)
        return job

    def pop_due(self) -> list[Job]:
        """Jobs whose time has come, most urgent first."""
        now = self.clock.now()
        due: list[Job] = []
        while self._queue and self._queue[0].not_before <= now:
            due.append(heapq.heappop(self._queue))
        due.sort(key=lambda j: (j.priority, j.seq))
        return due

    def next_due(self) -> float | None:
        """When the earliest queued job becomes due (the replay advances its clock to it)."""
        return self._queue[0].not_before if self._queue else None

    @property
    def pending(self) -> int:
        return len(self._queue)

"""Clocks: the live server runs on real time, the replay benchmark on virtual time.

Everything that places or moves blocks reads time only through a Clock, which is what lets the
benchmark drive the very objects the server runs.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...


class RealClock:
    """Monotonic seconds."""

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """Time that moves only when told to."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a virtual clock never goes back")
        self._now += seconds

    def advance_to(self, t: float) -> None:
        if t < self._now:
            raise ValueError(f"a virtual clock never goes back ({t} < {self._now})")
        self._now = t

"""Benchmark progress: a line every few seconds when the output is not a terminal."""

from __future__ import annotations

import io

from kvstore.bench.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_few_seconds_when_not_a_terminal() -> None:
    out, clock = io.StringIO(), Clock()
    with Progress("replay lru", total=1000, unit="requests", stream=out, every_s=5, clock=clock) as p:
        for _ in range(9):  # 100 requests a second: a line at 5 s, and one at the end
            clock.now += 1.0
            p.advance(100)
        clock.now += 0.5
        p.advance(100)
    assert out.getvalue().splitlines() == [
        "replay lru: 500/1,000 requests (50.0%), 5s elapsed, about 5s left",
        "replay lru: 1,000/1,000 requests (100.0%), 10s elapsed",
    ]


def test_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    with Progress("replay agent", total=3, stream=out, terminal=True) as p:
        for _ in range(3):
            p.advance()
    assert "replay agent" in out.getvalue() and "3/3" in out.getvalue()

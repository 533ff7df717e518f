"""The learned return-time model alone: conditional chances, learning per tool and per session,
the fallback chain to broader distributions, tails, and persistence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvstore.sessions.returns import Away, AwayKind, ReturnTimes


def tool(name: str, since: float, announced: float) -> Away:
    return Away(AwayKind.TOOL, name, since, announced)


def test_an_announcement_that_proves_exact_makes_the_chance_sharp_around_the_end() -> None:
    returns = ReturnTimes()
    for _ in range(50):
        returns.record(tool("pytest", 0.0, 30.0), 30.0)
    call = tool("pytest", 100.0, 30.0)
    assert returns.chance_back(call, 100.0, 2.0) < 1e-3  # just started: not back within 2 s
    assert returns.chance_back(call, 124.0, 2.0) < 0.05
    assert returns.chance_back(call, 129.0, 3.0) > 0.9  # the whole learned window lies ahead
    assert returns.time_back(call, 100.0, 0.5) == pytest.approx(130.0, rel=0.02)


def test_a_tool_whose_callers_guess_long_is_planned_shorter() -> None:
    returns = ReturnTimes()
    for _ in range(40):
        returns.record(tool("build", 0.0, 20.0), 10.0)  # announced 20 s, takes 10 s
    call = tool("build", 0.0, 20.0)
    assert returns.time_back(call, 0.0, 0.5) == pytest.approx(10.0, rel=0.05)
    assert returns.chance_back(call, 9.0, 2.0) > 0.8
    other = tool("lint", 0.0, 20.0)  # never seen: leans on every tool so far, plus the prior
    assert returns.time_back(other, 0.0, 0.5) < 20.0


def test_the_chance_is_conditioned_on_the_wait_so_far() -> None:
    returns = ReturnTimes()
    for seconds in (5, 6, 7, 8, 300, 320, 340, 360):  # people answer fast, or after a break
        returns.record(Away(AwayKind.USER, "acme", 0.0), seconds)
    person = Away(AwayKind.USER, "acme", 0.0)
    fast = returns.chance_back(person, 4.0, 5.0)
    lull = returns.chance_back(person, 60.0, 5.0)  # past the fast mode, far from the slow one
    slow = returns.chance_back(person, 310.0, 30.0)
    assert fast > 0.3 and lull < 0.05 and slow > 0.3


def test_past_everything_seen_the_chance_is_small_but_not_zero() -> None:
    returns = ReturnTimes()
    for _ in range(100):
        returns.record(tool("t", 0.0, 10.0), 10.0)
    overrun = returns.chance_back(tool("t", 0.0, 10.0), 500.0, 2.0)
    assert 0.0 < overrun < 0.05


def test_a_session_learns_its_own_rhythm_over_its_tenants() -> None:
    returns = ReturnTimes()
    for _ in range(30):  # the tenant's other sessions: minutes between requests
        returns.record(Away(AwayKind.SILENT, "acme", 0.0, session="other"), 120.0)
    fresh = Away(AwayKind.SILENT, "acme", 0.0, session="loop")
    assert returns.chance_back(fresh, 5.0, 2.0) < 0.1  # before it shows its own rhythm
    for _ in range(8):  # this one is an agent loop: a request every 6 s
        returns.record(Away(AwayKind.SILENT, "acme", 0.0, session="loop"), 6.0)
    assert returns.chance_back(fresh, 5.0, 2.0) > 0.5
    returns.forget("loop")  # it ended: what stays is what its tenant learned, its gaps among them
    newcomer = returns.chance_back(Away(AwayKind.SILENT, "acme", 0.0, session="new"), 5.0, 2.0)
    assert returns.chance_back(fresh, 5.0, 2.0) == newcomer < 0.3


def test_an_instant_return_is_learned_not_dropped() -> None:
    returns = ReturnTimes()
    for _ in range(30):
        returns.record(Away(AwayKind.RESUMING, "", 0.0), 0.0)
    returns.fold()  # all at one instant: one batch (see the next test)
    assert returns.chance_back(Away(AwayKind.RESUMING, "", 0.0), 0.0, 0.5) > 0.85


def test_a_burst_is_learned_in_one_batch_at_most_fold_every_s_late() -> None:
    from kvstore.sessions.returns import FOLD_EVERY_S

    returns = ReturnTimes()
    t = 100.0
    for i in range(20):  # twenty tool calls of one tool end within a few milliseconds
        returns.record(Away(AwayKind.TOOL_UNANNOUNCED, "grep", t - 2.0), 2.0 + i * 1e-4)
    first_only = returns.time_back(Away(AwayKind.TOOL_UNANNOUNCED, "grep", t), t, 0.5) - t
    later = t + 1.5 * FOLD_EVERY_S
    every = returns.time_back(Away(AwayKind.TOOL_UNANNOUNCED, "grep", later), later, 0.5) - later
    assert len(returns.specific[AwayKind.TOOL_UNANNOUNCED]["grep"].samples) == 20
    assert abs(every - 2.0) < abs(first_only - 2.0)  # twenty observations pull harder than one
    assert every == pytest.approx(2.0, rel=0.1)


def test_what_was_learned_survives_a_restart_and_a_bad_file_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "returns.json"
    returns = ReturnTimes(path)
    for _ in range(20):
        returns.record(tool("deploy", 0.0, 60.0), 30.0)
        returns.record(Away(AwayKind.USER, "acme", 0.0), 45.0)
    returns.save()
    again = ReturnTimes(path)
    for away in (tool("deploy", 0.0, 60.0), Away(AwayKind.USER, "acme", 0.0)):
        assert again.time_back(away, 0.0, 0.5) == pytest.approx(returns.time_back(away, 0.0, 0.5))
    path.write_text("{not json")
    assert ReturnTimes(path).time_back(tool("deploy", 0.0, 60.0), 0.0, 0.5) == pytest.approx(60.0, rel=0.05)


def test_bad_observations_are_ignored() -> None:
    returns = ReturnTimes()
    before = returns.time_back(Away(AwayKind.USER, "", 0.0), 0.0, 0.5)
    for bad in (-1.0, math.nan, math.inf):
        returns.record(Away(AwayKind.USER, "", 0.0), bad)
    assert returns.time_back(Away(AwayKind.USER, "", 0.0), 0.0, 0.5) == before


def test_a_windowed_kernel_equals_the_whole_one() -> None:
    import numpy as np

    from kvstore.sessions import returns

    for center in (-30.0, -12.0, -11.99, -3.3, 0.0, 7.77, 17.99, 18.0, 40.0):
        for scale in (returns.MIN_KERNEL, 0.05, returns.MAX_KERNEL):
            acc = np.zeros_like(returns._GRID)
            returns._add_kernels(acc, np.array([center]), scale)
            assert np.max(np.abs(acc - returns._logistic_cdf(center, scale))) < 1e-12
            returns._add_kernels(acc, np.array([center]), scale, -1.0)
            assert np.max(np.abs(acc)) < 1e-12
    # Several at once: the window covers them all, far-apart centers included.
    centers = np.array([-30.0, -3.3, 0.0, 7.77, 40.0])
    acc = np.zeros_like(returns._GRID)
    returns._add_kernels(acc, centers, 0.05)
    whole = sum(returns._logistic_cdf(c, 0.05) for c in centers)
    assert np.max(np.abs(acc - whole)) < 1e-9

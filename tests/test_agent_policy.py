"""The agent policy on a virtual clock: exact timelines of offload, prefetch, overrun and fan-out."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kvstore.clock import VirtualClock
from kvstore.config import AgentConfig
from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound
from kvstore.hashing import Namespace
from kvstore.hints import Hints
from kvstore.policy.agent import AgentPolicy
from kvstore.policy.lru import LRUPolicy
from kvstore.sessions import SessionRegistry, ToolDurations
from kvstore.store import PutBlock, Store
from kvstore.tiers.memory import MemoryTier

BLOCK = 4096
NS = Namespace("t", "m", block_tokens=4, block_bytes=BLOCK)
LINK = 4 * BLOCK  # bytes/s from DRAM to HBM: a 4-block session takes 1 s to come back
MARGIN = 0.5


def key(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=32).digest()


def make(tmp_path: Path, policy: str = "agent", hbm: int = 8, **agent: object) -> tuple[Store, Hints]:
    config = AgentConfig(prefetch_margin_s=MARGIN, **agent)
    durations = ToolDurations(tmp_path / "tools.json", config.learned_quantile, config.default_tool_s)
    store = Store(
        [MemoryTier("hbm", hbm * BLOCK, "cpu"), MemoryTier("dram", 64 * BLOCK)],
        [NS],
        AgentPolicy(config) if policy == "agent" else LRUPolicy(),
        VirtualClock(),
        sessions=SessionRegistry(durations),
        link_bandwidths={("dram", "hbm"): LINK},
    )
    return store, Hints(store)


def put(store: Store, session: str | None, *names: str, pin: bool = False) -> None:
    store.put([PutBlock("t", key(n), bytes(BLOCK), session=session, pin=pin) for n in names])


def tiers(store: Store, *names: str) -> list[str | None]:
    return [e.tier if (e := store.index.get("t", key(n))) else None for n in names]


def run_until(store: Store, t: float) -> None:
    """Advance the virtual clock to t, running every job at its due time on the way."""
    while (due := store.mover.next_due()) is not None and due <= t:
        store.clock.advance_to(max(due, store.clock.now()))
        store.run_due_jobs()
    store.clock.advance_to(t)


A = [f"a{i}" for i in range(4)]
B = [f"b{i}" for i in range(6)]


def test_tool_call_blocks_leave_first_under_pressure_and_are_back_before_the_end(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    put(store, None, "old1", "old2")  # unreferenced and least recently used
    hints.open_session("A", "t")
    put(store, "A", *A)
    plan = hints.begin_tool_call("A", "pytest", expected_s=30.0)
    lead = 4 * BLOCK / LINK + MARGIN
    assert plan.prefetch_in_s == pytest.approx(30.0 - lead)

    run_until(store, 1.0)
    hints.open_session("B", "t")
    put(store, "B", *B)  # 12 blocks wanted, 8 slots: A's four leave, not the older unreferenced ones
    assert tiers(store, *A) == ["dram"] * 4
    assert tiers(store, "old1", "old2") == ["hbm", "hbm"]
    hints.awaiting_user("B")  # B's blocks are now needed last: the prefetch may push them out

    run_until(store, 30.0 - lead - 0.01)
    assert tiers(store, *A) == ["dram"] * 4
    run_until(store, 30.0 - lead)
    assert tiers(store, *A) == ["hbm"] * 4  # back a full lead before the announced end
    assert tiers(store, "old1", "old2") == ["hbm", "hbm"]  # B's blocks made the room
    run_until(store, 30.0)
    hints.end_tool_call(plan.call_id)
    assert store.sessions.prefetches == {"on_time": 1, "late": 0, "wasted": 0}


def test_the_lru_baseline_pushes_out_the_oldest_blocks_instead(tmp_path: Path) -> None:
    store, hints = make(tmp_path, policy="lru")
    put(store, None, "old1", "old2")
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.begin_tool_call("A", "pytest", expected_s=30.0)
    hints.open_session("B", "t")
    put(store, "B", *B)
    assert tiers(store, "old1", "old2", *A[:2]) == ["dram"] * 4
    run_until(store, 30.0)
    assert tiers(store, *A[:2]) == ["dram"] * 2  # no hints, no prefetch


def test_early_end_makes_the_prefetch_urgent(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    plan = hints.begin_tool_call("A", "pytest", expected_s=60.0)
    hints.open_session("B", "t")
    put(store, "B", *B)
    hints.awaiting_user("B")
    assert tiers(store, *A) == ["hbm", "hbm", "dram", "dram"]  # the chain's tail leaves first
    run_until(store, 5.0)
    hints.end_tool_call(plan.call_id)
    assert store.mover.next_due() == 5.0  # urgent: due now, not at the old schedule
    store.run_due_jobs()
    assert tiers(store, *A) == ["hbm"] * 4
    assert store.sessions.prefetches["late"] == 1


def test_a_tool_that_overruns_stops_holding_hbm(tmp_path: Path) -> None:
    store, hints = make(tmp_path, overrun_grace_s=2.0, overrun_grace_fraction=0.0)
    put(store, None, "old1", "old2")  # unreferenced, least recently used
    hints.open_session("A", "t")
    put(store, "A", *A)
    plan = hints.begin_tool_call("A", "pytest", expected_s=10.0)
    hints.open_session("B", "t")
    run_until(store, 11.99)  # in the grace period A is about to come back: it keeps its room
    put(store, "B", "b0", "b1", "b2")
    assert tiers(store, *A) == ["hbm"] * 4
    assert tiers(store, "old1", "old2") == ["dram", "hbm"]
    run_until(store, 12.0)  # overdue: nobody knows when A comes back, so it is first to leave
    assert tiers(store, *A) == ["hbm"] * 4  # ... but only when room is needed
    put(store, "B", "b3", "b4", "b5", "b6", "b7")  # 5 to push out: A's four, then the LRU one
    assert tiers(store, *A, "old2") == ["dram"] * 5
    run_until(store, 40.0)
    hints.end_tool_call(plan.call_id)
    hints.awaiting_user("B")
    store.run_due_jobs()  # the late end brings A back at once
    assert tiers(store, *A) == ["hbm"] * 4
    assert store.sessions.prefetches["late"] == 1


def test_overrun_with_offload_eagerly_moves_blocks_out_at_once(tmp_path: Path) -> None:
    store, hints = make(tmp_path, offload_eagerly=True, overrun_grace_s=2.0, overrun_grace_fraction=0.0)
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.begin_tool_call("A", "pytest", expected_s=10.0)
    run_until(store, 11.0)
    assert tiers(store, *A) == ["hbm"] * 4  # prefetched back for the expected end
    run_until(store, 12.0)
    assert tiers(store, *A) == ["dram"] * 4


def test_offload_eagerly_moves_blocks_out_at_the_start_of_the_call(tmp_path: Path) -> None:
    store, hints = make(tmp_path, offload_eagerly=True)
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.begin_tool_call("A", "pytest", expected_s=20.0)
    store.run_due_jobs()
    assert tiers(store, *A) == ["dram"] * 4
    run_until(store, 20.0 - 1.5)
    assert tiers(store, *A) == ["hbm"] * 4


def test_fanout_loads_the_prefix_once_and_pins_it_until_the_last_branch(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    store.evict(tier="hbm", nbytes=4 * BLOCK)
    assert tiers(store, *A) == ["dram"] * 4
    fanout = hints.announce_fanout("A", 3, ttl_s=60.0)
    store.run_due_jobs()
    assert tiers(store, *A) == ["hbm"] * 4
    assert store.counters["hbm"].moves_in == 4  # loaded once
    for i in range(3):
        hints.open_session(f"branch{i}", "t")
        put(store, f"branch{i}", *(f"x{i}{j}" for j in range(6)))  # heavy pressure from the branches
        assert tiers(store, *A) == ["hbm"] * 4
        assert store.counters["hbm"].moves_in == 4
        left = hints.branch_done(fanout.fanout_id)
        assert left == 2 - i
        assert all(store.index.get("t", key(n)).pins == (1 if left else 0) for n in A)
    assert store.stats().tiers[0].pinned_blocks == 0
    with pytest.raises(NotFound):
        hints.branch_done(fanout.fanout_id)


def test_fanout_ttl_releases_the_pins(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.announce_fanout("A", 5, ttl_s=8.0)
    store.run_due_jobs()
    assert store.stats().tiers[0].pinned_blocks == 4
    run_until(store, 7.9)
    assert store.stats().tiers[0].pinned_blocks == 4
    run_until(store, 8.0)
    assert store.stats().tiers[0].pinned_blocks == 0


def test_learned_durations_feed_plans_and_survive_a_restart(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    for seconds in (10.0, 18.0, 12.0, 16.0, 14.0):
        plan = hints.begin_tool_call("A", "build")
        run_until(store, store.clock.now() + seconds)
        hints.end_tool_call(plan.call_id)
    assert hints.begin_tool_call("A", "build").expected_s == 12.0  # the 25th percentile, not the mean
    assert store.sessions.durations.expected("never-seen") == 10.0  # the configured default
    restarted = ToolDurations(tmp_path / "tools.json", 0.25, 10.0)
    assert restarted.expected("build") == 12.0


def test_two_sessions_sharing_a_prefix_keep_it_while_either_needs_it(tmp_path: Path) -> None:
    store, hints = make(tmp_path, hbm=8)
    shared, tail_a, tail_b = ["p0", "p1", "p2", "p3"], ["ta0", "ta1"], ["tb0", "tb1"]
    for sid, tail in (("A", tail_a), ("B", tail_b)):
        hints.open_session(sid, "t")
        put(store, sid, *shared, *tail)
    hints.begin_tool_call("A", "pytest", expected_s=30.0)  # A is away; B still runs on the prefix
    put(store, None, "n0", "n1")  # pressure: A's own tail leaves, the shared prefix stays
    assert tiers(store, *tail_a) == ["dram", "dram"]
    assert tiers(store, *shared) == ["hbm"] * 4
    hints.awaiting_user("B")  # now B needs nothing soon, A needs the prefix at t=30
    put(store, None, "n2", "n3")
    assert tiers(store, *tail_b) == ["dram", "dram"]  # needed never: leaves before the prefix
    assert tiers(store, *shared) == ["hbm"] * 4
    hints.close_session("A")
    hints.close_session("B")
    assert all(store.index.get("t", key(n)).sessions is None for n in shared)


def test_prefetch_never_pushes_out_a_block_needed_sooner(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.begin_tool_call("A", "pytest", expected_s=30.0)
    hints.open_session("B", "t")
    put(store, "B", *B, "b6", "b7")  # B, running, fills HBM
    assert tiers(store, *A) == ["dram"] * 4
    run_until(store, 30.0)
    assert tiers(store, *A) == ["dram"] * 4  # B runs now: its blocks are needed sooner than A's
    assert tiers(store, *B) == ["hbm"] * 6


def test_bad_hints_get_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    plan = hints.begin_tool_call("A", "pytest", expected_s=30.0)
    before = (
        store.mover.pending,
        store.stats().tiers[0].pinned_blocks,
        dict(store.sessions.hints),
        store.sessions.sessions["A"].state,
        store.sessions.sessions["A"].tool,
    )
    cases = [
        (NotFound, lambda: hints.begin_tool_call("ghost", "pytest", 3.0)),
        (NotFound, lambda: hints.end_tool_call("no-such-call")),
        (NotFound, lambda: hints.awaiting_user("ghost")),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", -1.0)),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", float("nan"))),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", 1e12)),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "", 3.0)),
        (FailedPrecondition, lambda: hints.begin_tool_call("A", "pytest", 3.0)),  # already in a tool
        (FailedPrecondition, lambda: hints.awaiting_user("A")),
        (InvalidArgument, lambda: hints.announce_fanout("A", 0, 10.0)),
        (InvalidArgument, lambda: hints.announce_fanout("A", 3, -5.0)),
        (NotFound, lambda: hints.branch_done("nope")),
        (InvalidArgument, lambda: hints.open_session("", "t")),
        (NotFound, lambda: hints.open_session("C", "no-such-namespace")),
        (InvalidArgument, lambda: hints.bind("A", "other-ns", [key("a0")])),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()
    after = (
        store.mover.pending,
        store.stats().tiers[0].pinned_blocks,
        dict(store.sessions.hints),
        store.sessions.sessions["A"].state,
        store.sessions.sessions["A"].tool,
    )
    assert after == before
    assert set(store.sessions.sessions) == {"A"}
    hints.end_tool_call(plan.call_id)


def test_a_prefetch_starts_earlier_when_the_blocks_went_down_to_disk(tmp_path: Path) -> None:
    config = AgentConfig(prefetch_margin_s=MARGIN)
    store = Store(
        [MemoryTier("hbm", 8 * BLOCK, "cpu"), MemoryTier("dram", 2 * BLOCK), MemoryTier("disk", 64 * BLOCK)],
        [NS],
        AgentPolicy(config),
        VirtualClock(),
        sessions=SessionRegistry(ToolDurations(None, 0.25, 10.0)),
        link_bandwidths={("dram", "hbm"): LINK, ("disk", "hbm"): LINK / 8},
    )
    hints = Hints(store)
    hints.open_session("A", "t")
    put(store, "A", *A)
    hints.begin_tool_call("A", "pytest", expected_s=30.0)
    planned = store.sessions.sessions["A"].prefetch.scheduled_at
    assert planned == pytest.approx(30.0 - (1.0 + MARGIN))  # all of A is in HBM: 4 blocks over the DRAM link
    store.evict(tier="hbm", nbytes=4 * BLOCK)  # A goes down; DRAM holds 2, so 2 land on the slow tier
    assert tiers(store, *A).count("disk") == 2
    replanned = store.sessions.sessions["A"].prefetch.scheduled_at
    assert replanned == pytest.approx(30.0 - (2 * BLOCK / LINK + 2 * BLOCK / (LINK / 8) + MARGIN))
    run_until(store, replanned)
    assert tiers(store, *A) == ["hbm"] * 4


def test_announcements_that_run_long_are_planned_shorter_and_the_lesson_survives_a_restart(
    tmp_path: Path,
) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", *A)
    for _ in range(6):  # the framework keeps announcing 20 s; the tool keeps taking 10 s
        plan = hints.begin_tool_call("A", "pytest", expected_s=20.0)
        run_until(store, store.clock.now() + 10.0)
        hints.end_tool_call(plan.call_id)
    started = store.clock.now()
    plan = hints.begin_tool_call("A", "pytest", expected_s=20.0)
    assert plan.expected_s == 20.0  # what the caller said is kept and shown as is
    lead = 4 * BLOCK / LINK + MARGIN
    assert store.sessions.sessions["A"].prefetch.scheduled_at == pytest.approx(started + 10.0 - lead)
    assert ToolDurations(tmp_path / "tools.json", 0.25, 10.0).planning_factor("pytest") == pytest.approx(0.5)
    assert store.sessions.durations.planning_factor("never-announced") == 1.0

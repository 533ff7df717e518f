"""The agent policy on a virtual clock: given these sessions and what was learned of absences like
theirs, this order of victims; swaps that bring a session back before it returns, and only then;
fan-outs; bad hints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound
from kvstore.hashing import Namespace
from kvstore.hints import Hints
from kvstore.mover import Links
from kvstore.plan_feed import Subscription
from kvstore.sessions import Away, AwayKind, ReturnTimes
from kvstore.stats import store_stats
from kvstore.store import PutBlock, Store
from kvstore.tiers.memory import MemoryTier

BLOCK = 4096
NS = Namespace("t", "m", block_tokens=4, block_bytes=BLOCK)
LINK = 4 * BLOCK  # bytes/s from DRAM to HBM: a 4-block session takes 1 s to come back


def key(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=32).digest()


def make(
    tmp_path: Path,
    policy: str = "agent",
    hbm: int = 8,
    dram: int = 64,
    disk: int = 0,
    engine_owns_top: bool = False,
) -> tuple[Store, Hints]:
    tiers = [MemoryTier("hbm", hbm * BLOCK, "cpu"), MemoryTier("dram", dram * BLOCK)]
    if disk:
        tiers.append(MemoryTier("disk", disk * BLOCK))  # a slow bottom tier (bytes in memory)
    store = compose(
        tiers,
        [NS],
        policy,
        clock=VirtualClock(),
        returns=ReturnTimes(tmp_path / "returns.json"),
        links=Links({("dram", "hbm"): LINK, ("hbm", "dram"): LINK, ("disk", "hbm"): LINK / 8}),
        engine_owns_top=engine_owns_top,
    )
    return store, Hints(store)


def learn(store: Store, away: Away, seconds: float, times: int = 20) -> None:
    for _ in range(times):
        store.sessions.returns.record(away, seconds)


def put(store: Store, session: str | None, *names: str, pin: bool = False) -> None:
    store.put([PutBlock("t", key(n), bytes(BLOCK), session=session, pin=pin) for n in names])


def tiers(store: Store, *names: str) -> list[str | None]:
    return [e.tier if (e := store.index.get("t", key(n))) else None for n in names]


def run_until(store: Store, t: float) -> None:
    """Advance the virtual clock to t, running every plan at its due time on the way (what was
    planned for now first, as the server's mover thread would at once)."""
    store.run_due()
    while (due := store.plans.next_due()) is not None and due <= t:
        store.clock.advance_to(max(due, store.clock.now()))
        store.run_due()
    store.clock.advance_to(t)


def test_victims_leave_by_their_chance_of_being_needed(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 3.0), 3.0)  # pytest takes what it announces
    learn(store, Away(AwayKind.USER, "", 0.0), 300.0)  # people here take minutes
    for sid in ("closed", "person", "tool"):
        hints.open_session(sid, "t")
        put(store, sid, f"{sid}0", f"{sid}1")
    hints.close_session("closed")  # its blocks are abandoned: nobody will ask for them
    hints.awaiting_user("person")
    hints.begin_tool_call("tool", "pytest", expected_s=3.0)
    run_until(store, 1.0)
    hints.open_session("running", "t")
    put(store, "running", "r0", "r1", pin=True)  # a request holds its blocks: HBM is full
    assert tiers(store, "closed0", "person0", "tool0") == ["hbm"] * 3
    put(store, "running", "r2", "r3", pin=True)
    assert tiers(store, "closed0", "closed1") == ["dram", "dram"]  # abandoned first
    put(store, "running", "r4", "r5", pin=True)
    assert tiers(store, "person0", "person1") == ["dram", "dram"]  # then the person, away for minutes
    assert tiers(store, "tool0", "tool1") == ["hbm", "hbm"]  # the tool call, back in 2 s, stays
    put(store, "running", "r6", pin=True)
    assert tiers(store, "tool0", "tool1").count("dram") == 1  # last: its chain's tail


def test_the_lru_baseline_pushes_out_the_oldest_blocks_instead(tmp_path: Path) -> None:
    store, hints = make(tmp_path, policy="lru")
    for sid in ("tool", "person"):
        hints.open_session(sid, "t")
        put(store, sid, f"{sid}0", f"{sid}1")
    hints.begin_tool_call("tool", "pytest", expected_s=3.0)
    hints.awaiting_user("person")
    hints.open_session("running", "t")
    put(store, "running", *(f"r{i}" for i in range(6)), pin=True)
    assert tiers(store, "tool0", "tool1", "person0", "person1") == ["dram", "dram", "hbm", "hbm"]


def test_blocks_of_a_tenant_without_sessions_compete_by_recency(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.USER, "", 0.0), 300.0)
    learn(store, Away(AwayKind.SILENT, "", 0.0), 5.0)  # this deployment's quiet gaps are short
    hints.open_session("person", "t")
    put(store, "person", "p0", "p1")
    hints.awaiting_user("person")
    run_until(store, 1.0)
    put(store, None, "s0", "s1")  # sessionless, just used: likely used again soon
    hints.open_session("running", "t")
    put(store, "running", *(f"r{i}" for i in range(6)), pin=True)
    assert tiers(store, "s0", "s1", "p0", "p1") == ["hbm", "hbm", "dram", "dram"]
    run_until(store, 400.0)  # long unused: now they are less likely needed than the person
    hints.open_session("other", "t")
    put(store, "other", "o0", "o1")
    hints.end_tool_call(hints.begin_tool_call("other", "x", 1.0).call_id)
    assert tiers(store, "s0", "s1") == ["dram", "dram"]


def test_a_tool_call_pushed_out_is_brought_back_before_it_returns(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 30.0), 30.0)
    learn(store, Away(AwayKind.TOOL, "build", 0.0, 45.0), 45.0)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    plan = hints.begin_tool_call("A", "pytest", expected_s=30.0)
    assert 20.0 < plan.prefetch_in_s < 30.0  # when it expects to bring A back, if A leaves
    run_until(store, 1.0)
    hints.open_session("B", "t")
    put(store, "B", *(f"b{i}" for i in range(8)), pin=True)  # B's request fills HBM
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4
    store.unpin("t", [key(f"b{i}") for i in range(8)])
    hints.begin_tool_call("B", "build", expected_s=45.0)  # B is back later than A
    run_until(store, 20.0)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4  # both come back soon: no reason yet
    run_until(store, 29.5)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["hbm"] * 4  # back, with a lead to spare
    assert tiers(store, "b4", "b5", "b6", "b7") == ["dram"] * 4  # B's chain's tail made the room
    hints.end_tool_call(plan.call_id)
    assert store.sessions.prefetches == {"on_time": 1, "late": 0, "wasted": 0}


def test_a_swap_never_displaces_blocks_more_likely_needed(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 30.0), 30.0)
    learn(store, Away(AwayKind.TOOL, "fast", 0.0, 31.0), 31.0)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    hints.begin_tool_call("A", "pytest", expected_s=30.0)
    hints.open_session("B", "t")
    put(store, "B", *(f"b{i}" for i in range(8)), pin=True)
    store.unpin("t", [key(f"b{i}") for i in range(8)])
    hints.begin_tool_call("B", "fast", expected_s=31.0)  # B is back within a second of A
    run_until(store, 29.5)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4
    assert tiers(store, *(f"b{i}" for i in range(8))) == ["hbm"] * 8


def test_ending_a_tool_call_early_brings_its_kv_back_at_once(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.TOOL, "build", 0.0, 20.0), 20.0)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    plan = hints.begin_tool_call("A", "pytest", expected_s=600.0)
    hints.open_session("B", "t")
    put(store, "B", *(f"b{i}" for i in range(8)), pin=True)  # B's request holds all of HBM
    store.unpin("t", [key(f"b{i}") for i in range(8)])
    hints.begin_tool_call("B", "build", expected_s=20.0)  # and B is back long before A's 600 s
    run_until(store, 5.0)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4
    hints.end_tool_call(plan.call_id)  # A's tool finished early: its next request is imminent
    store.run_due()  # what that planned runs now (the server's mover thread does it at once)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["hbm"] * 4


def test_a_person_typing_brings_their_session_back(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.USER, "", 0.0), 600.0)
    learn(store, Away(AwayKind.USER_ACTIVE, "", 0.0), 4.0)
    learn(store, Away(AwayKind.TOOL, "build", 0.0, 90.0), 90.0)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    hints.awaiting_user("A")
    hints.open_session("B", "t")
    put(store, "B", *(f"b{i}" for i in range(8)), pin=True)
    store.unpin("t", [key(f"b{i}") for i in range(8)])
    hints.begin_tool_call("B", "build", expected_s=90.0)
    run_until(store, 30.0)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4
    hints.user_active("A")  # people here send their request about 4 s after they start typing
    assert store.sessions.sessions["A"].state.value == "user_active"
    run_until(store, 33.5)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["hbm"] * 4
    store.lookup("t", [key(f"a{i}") for i in range(4)], session="A")  # the person's request
    assert store.sessions.prefetches["on_time"] == 1
    assert store.sessions.sessions["A"].state.value == "running"


def test_a_lower_tier_keeps_what_comes_back_before_what_left_for_good(tmp_path: Path) -> None:
    store, hints = make(tmp_path, hbm=4, dram=8, disk=64)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 60.0), 60.0)
    learn(store, Away(AwayKind.USER, "", 0.0), 86400.0)  # these people come back the next day
    for sid in ("person", "tool"):
        hints.open_session(sid, "t")
        put(store, sid, f"{sid}0", f"{sid}1", f"{sid}2", f"{sid}3")
    hints.awaiting_user("person")
    hints.begin_tool_call("tool", "pytest", expected_s=60.0)
    hints.open_session("running", "t")
    for i in range(3):  # requests stream through: DRAM fills and pushes down to disk
        put(store, "running", *(f"r{i}{j}" for j in range(4)), pin=True)
        store.unpin("t", [key(f"r{i}{j}") for j in range(4)])
        run_until(store, store.clock.now() + 1.0)
    assert tiers(store, "tool0", "tool1", "tool2", "tool3") == ["dram"] * 4
    assert tiers(store, "person0", "person1", "person2", "person3") == ["disk"] * 4


def test_with_an_engine_owning_hbm_it_evicts_by_lru_whatever_the_chances(tmp_path: Path) -> None:
    store, hints = make(tmp_path, engine_owns_top=True)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 3.0), 3.0)
    learn(store, Away(AwayKind.USER, "", 0.0), 3000.0)
    for sid in ("tool", "person"):
        hints.open_session(sid, "t")
        put(store, sid, f"{sid}0", f"{sid}1")
    hints.begin_tool_call("tool", "pytest", expected_s=3.0)
    hints.awaiting_user("person")
    hints.open_session("running", "t")
    put(store, "running", *(f"r{i}" for i in range(6)), pin=True)
    assert tiers(store, "tool0", "tool1", "person0", "person1") == ["dram", "dram", "hbm", "hbm"]
    store.unpin("t", [key(f"r{i}") for i in range(6)])
    hints.awaiting_user("running")
    run_until(store, 2.9)  # ... and warms what is about to be needed into it (a warm request)
    assert tiers(store, "tool0", "tool1") == ["hbm", "hbm"]


def test_fanout_loads_the_prefix_once_and_pins_it_until_the_last_branch(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    store.evict(tier="hbm", nbytes=4 * BLOCK)
    assert tiers(store, "a0", "a1", "a2", "a3") == ["dram"] * 4
    fanout = hints.announce_fanout("A", 3, ttl_s=60.0)
    store.run_due()
    assert tiers(store, "a0", "a1", "a2", "a3") == ["hbm"] * 4
    assert store.counters["hbm"].moves_in == 4  # loaded once
    for i in range(3):
        hints.open_session(f"branch{i}", "t")
        put(store, f"branch{i}", *(f"x{i}{j}" for j in range(6)))  # heavy pressure from the branches
        assert tiers(store, "a0", "a1", "a2", "a3") == ["hbm"] * 4
        assert store.counters["hbm"].moves_in == 4
        left = hints.branch_done(fanout.fanout_id)
        assert left == 2 - i
        assert all(store.index.get("t", key(f"a{j}")).pins == (1 if left else 0) for j in range(4))
    assert store_stats(store).tiers[0].pinned_blocks == 0
    with pytest.raises(NotFound):
        hints.branch_done(fanout.fanout_id)


def test_fanout_ttl_releases_the_pins(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1", "a2", "a3")
    hints.announce_fanout("A", 5, ttl_s=8.0)
    store.run_due()
    assert store_stats(store).tiers[0].pinned_blocks == 4
    run_until(store, 7.9)
    assert store_stats(store).tiers[0].pinned_blocks == 4
    run_until(store, 8.0)
    assert store_stats(store).tiers[0].pinned_blocks == 0


def test_what_is_learned_feeds_replies_and_survives_a_restart(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", "a0")
    for seconds in (10.0, 18.0, 12.0, 16.0, 14.0) * 4:
        plan = hints.begin_tool_call("A", "build")
        run_until(store, store.clock.now() + seconds)
        hints.end_tool_call(plan.call_id)
    assert hints.begin_tool_call("A", "build").expected_s == pytest.approx(14.0, rel=0.1)  # the median
    store.close()
    restarted = ReturnTimes(tmp_path / "returns.json")
    assert restarted.median_s(AwayKind.TOOL_UNANNOUNCED, "build") == pytest.approx(14.0, rel=0.1)
    assert ReturnTimes().median_s(AwayKind.TOOL_UNANNOUNCED, "build") == pytest.approx(10.0)  # the prior


def test_two_sessions_sharing_a_prefix_keep_it_while_either_needs_it(tmp_path: Path) -> None:
    store, hints = make(tmp_path, hbm=8)
    learn(store, Away(AwayKind.USER, "", 0.0), 3000.0)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 3.0), 3.0)
    shared, tail_a, tail_b = ["p0", "p1", "p2", "p3"], ["ta0", "ta1"], ["tb0", "tb1"]
    for sid, tail in (("A", tail_a), ("B", tail_b)):
        hints.open_session(sid, "t")
        put(store, sid, *shared, *tail)
    hints.awaiting_user("A")  # A is away for long; B is back in 3 s and needs the prefix
    hints.begin_tool_call("B", "pytest", expected_s=3.0)
    hints.open_session("C", "t")
    put(store, "C", "n0", "n1", pin=True)
    assert tiers(store, *tail_a) == ["dram", "dram"]  # A's own tail leaves; the shared prefix stays
    assert tiers(store, *shared) == ["hbm"] * 4
    hints.close_session("A")
    hints.close_session("B")
    assert all(store.index.get("t", key(n)).sessions is None for n in shared)


def test_bad_hints_get_clear_errors_and_change_nothing(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1")
    plan = hints.begin_tool_call("A", "pytest", expected_s=30.0)
    before = (
        store.plans.pending,
        store_stats(store).tiers[0].pinned_blocks,
        dict(store.sessions.hints),
        store.sessions.sessions["A"].state,
        store.sessions.sessions["A"].tool,
    )
    cases = [
        (NotFound, lambda: hints.begin_tool_call("ghost", "pytest", 3.0)),
        (NotFound, lambda: hints.end_tool_call("no-such-call")),
        (NotFound, lambda: hints.awaiting_user("ghost")),
        (NotFound, lambda: hints.user_active("ghost")),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", -1.0)),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", float("nan"))),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "pytest", 1e12)),
        (InvalidArgument, lambda: hints.begin_tool_call("A", "", 3.0)),
        (FailedPrecondition, lambda: hints.begin_tool_call("A", "pytest", 3.0)),  # already in a tool
        (FailedPrecondition, lambda: hints.awaiting_user("A")),
        (FailedPrecondition, lambda: hints.user_active("A")),
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
        store.plans.pending,
        store_stats(store).tiers[0].pinned_blocks,
        dict(store.sessions.hints),
        store.sessions.sessions["A"].state,
        store.sessions.sessions["A"].tool,
    )
    assert after == before
    assert set(store.sessions.sessions) == {"A"}
    hints.end_tool_call(plan.call_id)


def test_a_warm_plan_goes_out_as_the_session_is_due_back(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    learn(store, Away(AwayKind.TOOL, "pytest", 0.0, 30.0), 30.0)
    watcher = store.plan_feed.subscribe(Subscription("", ["warm"], lambda: None))
    hints.open_session("A", "t")
    put(store, "A", "a0", "a1")  # all in HBM: kvstore moves nothing, but the engine's cache may not hold it
    plan = hints.begin_tool_call("A", "pytest", expected_s=30.0)
    run_until(store, plan.prefetch_in_s - 0.01)
    assert watcher.drain() == ([], 0)
    run_until(store, plan.prefetch_in_s)
    (event,), dropped = watcher.drain()
    assert (event.kind, event.session, dropped) == ("warm", "A", 0)
    assert 27.0 < plan.prefetch_in_s + event.due_in_s <= 30.5  # due back around the learned 30 s


def test_a_session_back_before_its_warm_plan_drops_it(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    watcher = store.plan_feed.subscribe(Subscription("", ["warm"], lambda: None))
    hints.open_session("A", "t")
    put(store, "A", "a0")
    plan = hints.begin_tool_call("A", "pytest", expected_s=600.0)
    run_until(store, 1.0)
    hints.end_tool_call(plan.call_id)  # back long before: the warm planned for later is stale
    run_until(store, 700.0)
    assert watcher.drain() == ([], 0)
    assert store.plans.pending <= 1  # at most a check, nothing for A


def test_a_burst_of_hints_queues_one_rebalance(tmp_path: Path) -> None:
    store, hints = make(tmp_path)
    for n in range(20):
        hints.open_session(f"s{n}", "t")
        put(store, f"s{n}", f"b{n}")
    checks = []
    for n in range(20):  # all at the same instant, before the mover runs
        hints.awaiting_user(f"s{n}")
        checks = [p for p in store.plans._heap if p[3].kind.value == "check" and p[3].ref == "rebalance"]
        assert len(checks) == 1  # ranking every session once, not once per hint
    store.run_due()
    hints.user_active("s0")
    assert [p for p in store.plans._heap if p[3].ref == "rebalance"]  # the next hint asks again

"""The agent policy with sessions and hints, under random sequences, also with a move in flight.

A move runs on a background thread whose copy is parked at a gate (between reserving the
destination and switching the block over), so the test decides what happens meanwhile — no
timing. While one is parked, only data-path calls, time passing and the meanwhile_* rules run,
so that what races with a move is tried often. Invariants: each session's bytes per tier equal
the blocks it references there, references are symmetric, every tier's used bytes are its
stored blocks plus the moves into it still in flight, pinned blocks never go down, and nothing
is left marked moving once moves end.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.errors import FailedPrecondition, KVStoreError
from kvstore.hashing import Namespace
from kvstore.hints import Hints
from kvstore.index import BlockEntry
from kvstore.mover import Copier, Copy, Links
from kvstore.store import PutBlock
from kvstore.tiers.base import Tier
from kvstore.tiers.memory import MemoryTier

BLOCK = 512
NS = Namespace("t", "m", block_tokens=1, block_bytes=BLOCK)
SESSIONS = ["s0", "s1", "s2"]
CHAIN = 6  # blocks per session; the first two are a prefix all sessions share
SHARED = 2
GATE_S = 10.0  # a parked copy that is never released fails the test instead of hanging it


def block_id(session: int, i: int) -> int:
    return i if i < SHARED else SHARED + session * CHAIN + i


def key(n: int) -> bytes:
    return hashlib.blake2b(n.to_bytes(2, "big"), digest_size=32).digest()


def data(n: int) -> bytes:
    return n.to_bytes(2, "big") * (BLOCK // 2)


def chain(session: int) -> list[bytes]:
    return [key(block_id(session, i)) for i in range(CHAIN)]


class GatedCopier(Copier):
    """Copies made on the background thread stop at a gate until the test opens it."""

    def __init__(self) -> None:
        super().__init__(Links())
        self.background: threading.Thread | None = None
        self.gate = threading.Event()
        self.parked = threading.Event()  # the background copy is waiting at the gate
        self.in_flight: dict[str, int] = {}  # destination tier -> bytes reserved by parked copies
        self.moving: BlockEntry | None = None

    def copy_many(self, copies: Sequence[Copy], dst: Tier) -> list[Exception | None]:
        if threading.current_thread() is self.background:
            reserved = sum(staged.size for _, _, staged, _ in copies)
            self.in_flight[dst.name] = self.in_flight.get(dst.name, 0) + reserved
            self.moving = copies[0][1]
            self.parked.set()
            opened = self.gate.wait(GATE_S)
            self.in_flight[dst.name] -= reserved
            self.moving = None
            assert opened, "a parked copy was never released"
        return super().copy_many(copies, dst)


class SessionsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        tiers: list[Tier] = [
            MemoryTier("hbm", 6 * BLOCK, "cpu"),
            MemoryTier("dram", 8 * BLOCK),
            MemoryTier("disk", 6 * BLOCK),
        ]
        self.store = compose(tiers, [NS], "agent", clock=self.clock)
        self.copier = GatedCopier()
        self.store.placement.copier = self.copier
        self.hints = Hints(self.store)
        self.calls: dict[str, str] = {}  # session -> open tool call
        self.fanouts: dict[str, str] = {}  # session -> running fan-out
        self.user_pins: dict[bytes, int] = {}  # key -> pins this test took (fan-outs take others)
        self.pinned_at: dict[bytes, int] = {}  # key -> level of a pinned block when last seen
        self.worker: threading.Thread | None = None
        self.failure: list[BaseException] = []

    def teardown(self) -> None:
        if self.worker is not None:
            self.copier.gate.set()
            self.worker.join(GATE_S)
        self.store.close()

    # ------------------------------------------------------------------ helpers

    def level(self, entry: BlockEntry) -> int:
        return self.store.placement.levels[entry.tier]

    def entry(self, n: int) -> BlockEntry | None:
        return self.store.index.get("t", key(n))

    def background(self, work: Any) -> None:
        """Run `work` on the background thread until its first copy parks (or it ends)."""
        self.copier.gate.clear()
        self.copier.parked.clear()

        def run() -> None:
            try:
                work()
            except KVStoreError:
                pass  # a refused call is an answer, not a failure
            except BaseException as exc:
                self.failure.append(exc)
            finally:
                self.copier.parked.set()

        self.worker = threading.Thread(target=run)
        self.copier.background = self.worker
        self.worker.start()
        assert self.copier.parked.wait(GATE_S)
        if not self.worker.is_alive() or self.copier.moving is None:
            self.finish()

    def finish(self) -> None:
        assert self.worker is not None
        self.copier.gate.set()
        self.worker.join(GATE_S)
        assert not self.worker.is_alive(), "the background move did not finish"
        self.worker = None
        self.copier.background = None
        assert not self.failure, self.failure

    # ------------------------------------------------------------------ the data path

    @rule(s=st.integers(0, 2), upto=st.integers(1, CHAIN))
    def request(self, s: int, upto: int) -> None:
        """A request of session s over the first `upto` blocks of its chain: look up, store the rest."""
        keys = chain(s)[:upto]
        match = self.store.lookup("t", keys, session=SESSIONS[s])
        rest = range(match.blocks, upto)
        self.store.put([PutBlock("t", keys[i], data(block_id(s, i)), session=SESSIONS[s]) for i in rest])

    @rule(n=st.integers(0, SHARED + 3 * CHAIN))
    def get(self, n: int) -> None:
        read = self.store.get("t", [key(n)])[0]
        assert read is None or read.data == data(n)

    @precondition(lambda self: self.worker is None)
    @rule(n=st.integers(0, SHARED + 3 * CHAIN))
    def delete(self, n: int) -> None:
        entry = self.entry(n)
        if entry is not None and not entry.movable:  # pinned, or moving in the background
            with pytest.raises(FailedPrecondition):
                self.store.delete("t", [key(n)])
        else:
            self.store.delete("t", [key(n)])

    @rule(tier=st.sampled_from(["hbm", "dram"]), blocks=st.integers(1, 4))
    def operator_evicts(self, tier: str, blocks: int) -> None:
        self.store.evict(tier=tier, nbytes=blocks * BLOCK)

    # ------------------------------------------------------------------ hints

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2), expected=st.floats(0.5, 60))
    def begin_tool_call(self, s: int, expected: float) -> None:
        sid = SESSIONS[s]
        if sid in self.calls:
            return
        with contextlib.suppress(KVStoreError):  # not open (closed, or never used)
            self.calls[sid] = self.hints.begin_tool_call(sid, "pytest", expected).call_id

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2))
    def end_tool_call(self, s: int) -> None:
        call = self.calls.pop(SESSIONS[s], None)
        if call is not None:
            with contextlib.suppress(KVStoreError):  # the session was closed, and its call with it
                self.hints.end_tool_call(call)

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2), active=st.booleans())
    def waiting_on_user(self, s: int, active: bool) -> None:
        sid = SESSIONS[s]
        if sid in self.calls:
            return
        with contextlib.suppress(KVStoreError):
            self.hints.user_active(sid) if active else self.hints.awaiting_user(sid)

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2), n=st.integers(1, 3))
    def fanout(self, s: int, n: int) -> None:
        sid = SESSIONS[s]
        if sid in self.fanouts:
            return
        with contextlib.suppress(KVStoreError):
            self.fanouts[sid] = self.hints.announce_fanout(sid, n, 30.0).fanout_id

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2))
    def branch_done(self, s: int) -> None:
        fanout = self.fanouts.get(SESSIONS[s])
        if fanout is None:
            return
        try:
            if self.hints.branch_done(fanout) == 0:
                del self.fanouts[SESSIONS[s]]
        except KVStoreError:
            del self.fanouts[SESSIONS[s]]  # expired or closed with its session

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2))
    def close_session(self, s: int) -> None:
        sid = SESSIONS[s]
        try:
            self.hints.close_session(sid)
        except KVStoreError:
            return
        self.calls.pop(sid, None)
        self.fanouts.pop(sid, None)

    @rule(seconds=st.floats(0.01, 40))
    def tick(self, seconds: float) -> None:
        """Time passes and due plans run here (the mover), also while a move is parked."""
        self.clock.advance(seconds)
        self.store.run_due()

    # ------------------------------------------------------------------ moves in flight

    @precondition(lambda self: self.worker is None)
    @rule(s=st.integers(0, 2))
    def promote_in_background(self, s: int) -> None:
        self.background(lambda: self.store.promote("t", chain(s), session=SESSIONS[s]))

    @precondition(lambda self: self.worker is None and len(self.store.index) > 0)
    @rule(data_=st.data())
    def evict_in_background(self, data_: st.DataObject) -> None:
        entries = sorted(self.store.index.entries(), key=lambda e: e.key)
        k = data_.draw(st.sampled_from(entries)).key
        self.background(lambda: self.store.evict("t", [k]))

    @precondition(lambda self: self.worker is None)
    @rule(seconds=st.floats(0.01, 40))
    def plans_in_background(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.background(self.store.run_due)

    def moving_id(self) -> int:
        entry = self.copier.moving
        assert entry is not None
        return next(n for n in range(SHARED + 3 * CHAIN) if key(n) == entry.key)

    @precondition(lambda self: self.worker is not None)
    @rule()
    def meanwhile_get(self) -> None:
        n = self.moving_id()
        read = self.store.get("t", [key(n)])[0]
        assert read is not None and read.data == data(n)  # readable at its source while it moves

    @precondition(lambda self: self.worker is not None)
    @rule(s=st.integers(0, 2))
    def meanwhile_promote(self, s: int) -> None:
        self.store.promote("t", chain(s), session=SESSIONS[s])

    @precondition(lambda self: self.worker is not None)
    @rule()
    def meanwhile_evict(self) -> None:
        with pytest.raises(FailedPrecondition):
            self.store.evict("t", [key(self.moving_id())])

    @precondition(lambda self: self.worker is not None)
    @rule()
    def meanwhile_delete(self) -> None:
        with pytest.raises(FailedPrecondition):
            self.store.delete("t", [key(self.moving_id())])

    def pin_block(self, n: int) -> None:
        self.store.pin("t", [key(n)])
        self.user_pins[key(n)] = self.user_pins.get(key(n), 0) + 1
        self.record_pinned()

    @precondition(lambda self: self.worker is not None)
    @rule()
    def meanwhile_pin(self) -> None:
        self.pin_block(self.moving_id())

    @precondition(lambda self: self.worker is None)
    @rule(n=st.integers(0, SHARED + 3 * CHAIN))
    def pin(self, n: int) -> None:
        if self.entry(n) is not None:
            self.pin_block(n)

    @precondition(lambda self: self.worker is None and bool(self.user_pins))
    @rule(data_=st.data())
    def unpin(self, data_: st.DataObject) -> None:
        k = data_.draw(st.sampled_from(sorted(self.user_pins)))
        assert self.store.index.get("t", k) is not None  # pinned blocks are never dropped
        self.store.unpin("t", [k])
        self.user_pins[k] -= 1
        if self.user_pins[k] == 0:
            del self.user_pins[k]

    @precondition(lambda self: self.worker is not None)
    @rule()
    def finish_background(self) -> None:
        self.finish()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def sessions_account_for_their_blocks(self) -> None:
        store = self.store
        with store.lock:
            sessions = store.sessions.sessions
            for session in sessions.values():
                for tier, blocks in session.tiers.items():
                    assert session.bytes_per_tier.get(tier, 0) == sum(e.size for e in blocks)
                    for entry in blocks:
                        assert entry.tier == tier and store.placement.held_locked(entry)
                        assert entry.sessions is not None and session.id in entry.sessions
            for entry in store.index.entries():
                for sid in entry.sessions or ():
                    assert entry in sessions[sid].tiers.get(entry.tier, {})

    @invariant()
    def tiers_hold_what_they_account(self) -> None:
        store = self.store
        with store.lock:
            for tier in store.tiers:
                stored = sum(e.size for e in store.index.entries() if e.tier == tier.name)
                assert tier.used == stored + self.copier.in_flight.get(tier.name, 0)
                assert tier.used <= tier.capacity

    def record_pinned(self) -> None:
        self.pinned_at = {e.key: self.level(e) for e in self.store.index.entries() if e.pins}

    @invariant()
    def pinned_blocks_never_go_down(self) -> None:
        for k, level in self.pinned_at.items():
            entry = self.store.index.get("t", k)
            if entry is not None and entry.pins:  # still pinned (by this test or a fan-out)
                assert self.level(entry) <= level
        for k in self.user_pins:
            assert self.store.index.get("t", k) is not None
        self.record_pinned()

    @invariant()
    def nothing_moves_once_moves_end(self) -> None:
        if self.worker is None:
            assert not any(e.moving for e in self.store.index.entries())


SessionsMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSessions = SessionsMachine.TestCase

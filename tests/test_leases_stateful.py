"""Random interleavings of puts, write leases and read leases over shared-memory tiers never leak a
slot, never show an uncommitted block, and never move or change a block while it is leased."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.errors import FailedPrecondition
from kvstore.hashing import Namespace
from kvstore.shm.leases import BlockHeader, Leases, SlotState
from kvstore.store import PutBlock
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier

BLOCK = 1024
TTL = 10.0
NS = Namespace("t", "m", block_tokens=1, block_bytes=BLOCK)
IDS = st.integers(0, 15)


def key(i: int) -> bytes:
    return hashlib.blake2b(bytes([i]), digest_size=32).digest()


def data(i: int) -> bytes:
    return bytes([i + 1]) * BLOCK


ID_OF = {key(i): i for i in range(16)}


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = compose(
            [
                MemoryTier("hbm", 3 * BLOCK, "cpu", shared=True),
                MemoryTier("dram", 4 * BLOCK, shared=True),
                DiskTier(self.dir, 3 * BLOCK),
            ],
            [NS],
            "lru",
            clock=VirtualClock(),
        )
        self.leases = Leases(self.store, TTL)
        self.writes: dict[int, list[int]] = {}  # lease -> ids written into its slots
        self.reads: dict[int, list[tuple[int, str, int]]] = {}  # lease -> (id, tier, offset)

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def bytes_at(self, tier: str, offset: int) -> bytes:
        segment = self.store.tier_by_name[tier].segment
        assert segment is not None and segment.data is not None
        return bytes(segment.data[offset : offset + BLOCK])

    @rule(ids=st.lists(IDS, min_size=1, max_size=3))
    def put(self, ids: list[int]) -> None:
        self.store.put([PutBlock("t", key(i), data(i)) for i in ids])

    @rule(ids=st.lists(IDS, min_size=1, max_size=3), torn=st.booleans())
    def reserve_and_write(self, ids: list[int], torn: bool) -> None:
        lease, slots = self.leases.reserve("t", [BlockHeader(key(i), BLOCK) for i in ids])
        for i, slot in zip(ids, slots, strict=True):
            if slot.state is SlotState.WRITE:
                tier = self.leases.shared_tiers[slot.segment]
                assert tier.segment is not None and tier.segment.data is not None
                n = BLOCK // 2 if torn else BLOCK  # torn: the writer died half-way
                tier.segment.data[slot.offset : slot.offset + n] = data(i)[:n]
        if not torn:
            self.writes[lease.id] = ids

    @precondition(lambda self: bool(self.writes))
    @rule(st_=st.data())
    def commit(self, st_: st.DataObject) -> None:
        lease_id = st_.draw(st.sampled_from(sorted(self.writes)))
        del self.writes[lease_id]
        try:
            self.leases.commit(lease_id)
        except FailedPrecondition:
            return  # expired: nothing was stored

    @rule(ids=st.lists(IDS, min_size=1, max_size=3))
    def acquire(self, ids: list[int]) -> None:
        lease, blocks = self.leases.acquire("t", [key(i) for i in ids])
        held = []
        for i, b in zip(ids, blocks, strict=True):
            if b is None:
                continue
            if b.data is not None:
                assert b.data == data(i)
            else:
                tier = self.leases.shared_tiers[b.segment].name
                assert self.bytes_at(tier, b.offset) == data(i)
                held.append((i, tier, b.offset))
        self.reads[lease.id] = held

    @precondition(lambda self: bool(self.reads))
    @rule(st_=st.data())
    def release(self, st_: st.DataObject) -> None:
        lease_id = st_.draw(st.sampled_from(sorted(self.reads)))
        self.reads.pop(lease_id)
        assert self.leases.release(lease_id)

    @rule(i=IDS)
    def delete(self, i: int) -> None:
        try:
            self.store.delete("t", [key(i)])
        except FailedPrecondition:
            assert any(i == held for reads in self.reads.values() for held, _, _ in reads)

    @rule()
    def time_passes(self) -> None:
        self.store.clock.advance(TTL + 1)
        self.leases.expire()
        self.writes.clear()
        self.reads.clear()

    @invariant()
    def leased_blocks_stay_put_and_intact(self) -> None:
        for reads in self.reads.values():
            for i, tier, offset in reads:
                entry = self.store.index.get("t", key(i))
                assert entry is not None and (entry.tier, entry.location) == (tier, offset)
                assert self.bytes_at(tier, offset) == data(i)

    @invariant()
    def every_visible_block_is_whole(self) -> None:
        """Torn writes were never committed: whatever the index shows holds its whole bytes."""
        for entry in self.store.index.entries():
            if self.store.tier_by_name[entry.tier].segment is not None:
                assert self.bytes_at(entry.tier, entry.location) == data(ID_OF[entry.key])

    @invariant()
    def no_slot_leaks(self) -> None:
        """Memory tiers hold exactly the indexed blocks plus the slots of open write leases."""
        used = sum(t.used for t in self.store.tiers[:2])
        indexed = sum(e.size for e in self.store.index.entries() if e.tier in ("hbm", "dram"))
        assert used == indexed + self.leases.stats()["reserved_bytes"]
        assert all(t.used <= t.capacity for t in self.store.tiers)


TestLeaseMachine = LeaseMachine.TestCase
TestLeaseMachine.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)

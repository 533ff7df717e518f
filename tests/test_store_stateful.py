"""A long random sequence of operations never breaks the store's invariants:
no tier above capacity, no overlapping extents, pinned blocks never move, bytes always intact."""

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
from kvstore.errors import FailedPrecondition, ResourceExhausted
from kvstore.hashing import Namespace
from kvstore.stats import store_stats
from kvstore.store import PutBlock
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier

BLOCK = 1024
NS = Namespace("t", "m", block_tokens=1, block_bytes=BLOCK)
IDS = st.integers(0, 23)


def key(i: int) -> bytes:
    return hashlib.blake2b(bytes([i]), digest_size=32).digest()


def data(i: int) -> bytes:
    return bytes([i]) * BLOCK


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp())
        self.store = compose(
            [
                MemoryTier("hbm", 3 * BLOCK, "cpu"),
                MemoryTier("dram", 4 * BLOCK),
                DiskTier(self.dir, 3 * BLOCK),
            ],
            [NS],
            "lru",
            clock=VirtualClock(),
        )
        self.pins: dict[int, int] = {}
        self.pinned_tier: dict[int, str] = {}

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def tier_of(self, i: int) -> str | None:
        entry = self.store.index.get("t", key(i))
        return entry.tier if entry else None

    @rule(ids=st.lists(IDS, min_size=1, max_size=4), pin=st.booleans())
    def put(self, ids: list[int], pin: bool) -> None:
        try:
            self.store.put([PutBlock("t", key(i), data(i), pin=pin) for i in ids])
        except ResourceExhausted:
            return
        if pin:
            for i in ids:
                if self.tier_of(i) is not None:
                    self.pins[i] = self.pins.get(i, 0) + 1
                    self.pinned_tier.setdefault(i, self.tier_of(i))

    @rule(i=IDS)
    def get(self, i: int) -> None:
        result = self.store.get("t", [key(i)])[0]
        if result is not None:
            assert result.data == data(i)

    @precondition(lambda self: bool(self.pins))
    @rule(data_=st.data())
    def unpin(self, data_: st.DataObject) -> None:
        i = data_.draw(st.sampled_from(sorted(self.pins)))
        self.store.unpin("t", [key(i)])
        self.pins[i] -= 1
        if not self.pins[i]:
            del self.pins[i], self.pinned_tier[i]

    @rule(i=IDS)
    def delete(self, i: int) -> None:
        try:
            self.store.delete("t", [key(i)])
        except FailedPrecondition:
            assert i in self.pins

    @rule(tier=st.sampled_from(["hbm", "dram", "disk"]), blocks=st.integers(1, 3), drop=st.booleans())
    def evict(self, tier: str, blocks: int, drop: bool) -> None:
        self.store.evict(tier=tier, nbytes=blocks * BLOCK, drop=drop)

    @rule()
    def tick(self) -> None:
        self.store.clock.advance(1)

    @invariant()
    def within_capacity_and_disjoint(self) -> None:
        for tier in self.store.tiers:
            assert 0 <= tier.used <= tier.capacity
            if isinstance(tier, MemoryTier):
                end = 0
                for offset, size in tier.extents():
                    assert offset >= end and offset + size <= tier.capacity
                    end = offset + size

    @invariant()
    def pinned_blocks_stay(self) -> None:
        for i, tier in self.pinned_tier.items():
            assert self.tier_of(i) == tier

    @invariant()
    def counts_agree(self) -> None:
        stats = store_stats(self.store)
        assert sum(t.blocks for t in stats.tiers) == stats.blocks == len(list(self.store.index.entries()))


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)

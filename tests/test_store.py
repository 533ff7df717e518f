"""The Store on real tiers (CPU-backed HBM stand-in, host DRAM, files on disk), no gRPC."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from kvstore.hashing import Namespace
from kvstore.persistence import disk_tier, flush, recover
from kvstore.stats import store_stats
from kvstore.store import PutBlock, Store
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier

BLOCK = 4096
NS = Namespace("t", "test-model", block_tokens=4, block_bytes=BLOCK)


def key(i: int) -> bytes:
    return hashlib.blake2b(f"block-{i}".encode(), digest_size=32).digest()


def data(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (BLOCK // 32)


def make_store(tmp_path: Path, hbm: int = 4, dram: int = 4, disk: int = 4) -> Store:
    tiers = [
        MemoryTier("hbm", hbm * BLOCK, "cpu"),
        MemoryTier("dram", dram * BLOCK),
        DiskTier(tmp_path, disk * BLOCK),
    ]
    return compose(tiers, [NS], "lru", clock=VirtualClock())


def put(store: Store, *ids: int, pin: bool = False) -> list[str]:
    return store.put([PutBlock("t", key(i), data(i), pin=pin) for i in ids])


def where(store: Store, *ids: int) -> list[str | None]:
    out = []
    for i in ids:
        entry = store.index.get("t", key(i))
        out.append(entry.tier if entry else None)
    return out


def snapshot(store: Store) -> tuple:
    s = store_stats(store)
    return tuple((t.name, t.used, t.blocks, t.pinned_blocks) for t in s.tiers), s.blocks


def test_lru_demotes_down_the_tiers_in_recency_order(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert put(store, 0, 1, 2, 3) == ["hbm"] * 4
    store.clock.advance(1)
    assert store.get("t", [key(0)])[0].tier == "hbm"  # 0 is now the most recently used
    put(store, 4)
    assert where(store, 1) == ["dram"]  # the least recently used leaves first
    put(store, 5, 6, 7)
    assert where(store, 2, 3, 0) == ["dram", "dram", "dram"]
    assert where(store, 4, 5, 6, 7) == ["hbm"] * 4
    put(store, 8)  # hbm pushes 4 down; dram is full, so its LRU (1) goes to disk
    assert where(store, 4, 1) == ["dram", "disk"]
    put(store, 9, 10, 11, 12, 13, 14, 15, 16)
    # 12 slots, 17 blocks: the five least recent (1, 2, 3, 0, 4 in that order) fell off the bottom.
    assert where(store, 1, 2, 3, 0, 4) == [None] * 5
    assert where(store, 5, 6, 7, 8) == ["disk"] * 4
    assert [t.drops for t in store_stats(store).tiers] == [0, 0, 5]
    assert store_stats(store).blocks == 12


def test_get_from_a_lower_tier_promotes_and_returns_identical_bytes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, *range(12))
    assert where(store, 0) == ["disk"]
    result = store.get("t", [key(0)])[0]
    assert result.tier == "disk" and result.data == data(0)
    assert where(store, 0) == ["hbm"]
    assert store.get("t", [key(0)])[0].data == data(0)
    # everything else is still readable and intact after the cascade the promotion caused
    for i in range(1, 12):
        got = store.get("t", [key(i)])[0]
        assert got is None or got.data == data(i)


def test_pinned_blocks_never_leave_their_tier(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, 0, 1, pin=True)
    put(store, *range(2, 30))
    assert where(store, 0, 1) == ["hbm", "hbm"]
    store.unpin("t", [key(0)])  # an unpinned block counts as just used, as in vLLM's free queue
    put(store, *range(30, 40))
    assert where(store, 0, 1) == ["disk", "hbm"]
    put(store, *range(40, 44))
    assert where(store, 0, 1) == [None, "hbm"]


def test_put_fails_whole_when_pinned_blocks_fill_every_tier(tmp_path: Path) -> None:
    store = make_store(tmp_path, hbm=2, dram=2, disk=2)
    put(store, *range(6), pin=True)
    before = snapshot(store)
    with pytest.raises(ResourceExhausted, match="pinned"):
        put(store, 100)
    assert snapshot(store) == before
    assert where(store, 100) == [None]


def test_bad_puts_change_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, 0)
    before = snapshot(store)
    good = PutBlock("t", key(1), data(1))
    with pytest.raises(InvalidArgument, match="exactly 4096 bytes"):
        store.put([good, PutBlock("t", key(2), b"short")])
    with pytest.raises(InvalidArgument, match="16 to 64 bytes"):
        store.put([good, PutBlock("t", b"tiny", data(2))])
    with pytest.raises(NotFound, match="not configured"):
        store.put([good, PutBlock("nope", key(2), data(2))])
    with pytest.raises(InvalidArgument, match="meta"):
        store.put([PutBlock("t", key(2), data(2), meta=b"x" * 5000)])
    assert snapshot(store) == before
    assert where(store, 1, 2) == [None, None]


def test_delete_pin_unpin_validate_everything_first(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, 0, 1)
    store.pin("t", [key(0)])
    with pytest.raises(FailedPrecondition):
        store.delete("t", [key(1), key(0)])
    assert where(store, 0, 1) == ["hbm", "hbm"]
    with pytest.raises(NotFound):
        store.pin("t", [key(1), key(99)])
    assert store.index.get("t", key(1)).pins == 0
    with pytest.raises(FailedPrecondition):
        store.unpin("t", [key(0), key(1)])
    assert store.index.get("t", key(0)).pins == 1
    store.unpin("t", [key(0)])
    assert store.delete("t", [key(0), key(1), key(7)]) == 2
    assert store_stats(store).blocks == 0


def test_evict_by_tier_and_by_key(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, 0, 1, 2)
    assert store.evict(tier="hbm", nbytes=BLOCK + 1) == (2, 2 * BLOCK)
    assert where(store, 0, 1, 2) == ["dram", "dram", "hbm"]
    assert store.evict("t", [key(2)], drop=True) == (1, BLOCK)
    assert where(store, 2) == [None]
    with pytest.raises(InvalidArgument):
        store.evict(tier="tape", nbytes=1)
    with pytest.raises(InvalidArgument):
        store.evict(tier="hbm", nbytes=0)


def test_a_move_copies_blocks_lying_end_to_end_in_both_tiers_as_one_copy(tmp_path: Path) -> None:
    store = make_store(tmp_path, hbm=8, dram=8)
    put(store, *range(8))  # hbm slots 0-7, in order
    store.evict("t", [key(6)])
    store.evict("t", [key(7)])  # dram slots 0 and 1
    store.delete("t", [key(6)])  # a one-block hole at dram slot 0
    copies = store.links.measured[("hbm", "dram")].moves
    assert store.evict("t", [key(i) for i in range(6)]) == (6, 6 * BLOCK)
    # Block 0 fills the hole; blocks 1-5 lie end to end in both tiers: two copies, not six.
    assert store.links.measured[("hbm", "dram")].moves == copies + 2
    assert [store.index.get("t", key(i)).location // BLOCK for i in range(6)] == [0, 2, 3, 4, 5, 6]
    store.promote("t", [key(i) for i in range(6)])
    assert where(store, *range(6)) == ["hbm"] * 6
    assert [r.data for r in store.get("t", [key(i) for i in range(8) if i != 6])] == [
        data(i) for i in range(8) if i != 6
    ]


def test_corrupt_disk_block_is_dropped_not_served(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put(store, *range(12))
    entry = store.index.get("t", key(0))
    assert entry.tier == "disk"
    path = disk_tier(store).path("t", key(0))
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert store.get("t", [key(0)]) == [None]
    assert store.index.get("t", key(0)) is None
    assert not path.exists()


def test_flush_then_recover_brings_every_block_back(tmp_path: Path) -> None:
    store = make_store(tmp_path, disk=16)
    put(store, *range(10))
    flush(store)
    store.close()
    fresh = make_store(tmp_path, disk=16)
    assert recover(fresh) == 10
    assert [r.data for r in fresh.get("t", [key(i) for i in range(10)])] == [data(i) for i in range(10)]


def test_lookup_walks_the_chain_until_the_first_miss(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    keys = NS.chain_keys(range(4 * 6))
    store.put(
        [PutBlock("t", k, data(i), p) for i, (k, p) in enumerate(zip(keys, [None, *keys], strict=False))]
    )
    store.delete("t", [keys[4]])
    match = store.lookup("t", keys)
    assert match.blocks == 4
    assert sum(match.blocks_per_tier.values()) == 4
    assert store.index.get("t", keys[1]).parent is keys[0]  # the chain shares key objects

"""Per-tenant quotas (config `tenants:`): bytes per tier and open sessions, on real tiers, and what
Admin Stats and kvctl report of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings
from kvstore.sdk import Client

from kvstore import errors
from kvstore.build import compose
from kvstore.clock import VirtualClock
from kvstore.config import ConfigError, load_settings
from kvstore.errors import ResourceExhausted
from kvstore.hashing import Namespace
from kvstore.kvctl import main as kvctl
from kvstore.quotas import TenantQuota
from kvstore.store import PutBlock, Store
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

A = Namespace("a-ns", "m", tenant="a", block_tokens=4, block_bytes=BLOCK)
B = Namespace("b-ns", "m", tenant="b", block_tokens=4, block_bytes=BLOCK)


def key(i: int) -> bytes:
    return hashlib.blake2b(f"block-{i}".encode(), digest_size=32).digest()


def make_store(tmp_path: Path, quota: TenantQuota, dram: int = 8, disk: int = 8) -> Store:
    tiers = [MemoryTier("dram", dram * BLOCK), DiskTier(tmp_path, disk * BLOCK)]
    return compose(tiers, [A, B], "lru", clock=VirtualClock(), quotas={"a": quota})


def put(store: Store, ns: Namespace, *ids: int, pin: bool = False, session: str | None = None) -> list[str]:
    blocks = [PutBlock(ns.name, key(i), bytes([i]) * BLOCK, pin=pin, session=session) for i in ids]
    return store.put(blocks)


def tiers_of(store: Store, ns: Namespace, *ids: int) -> list[str | None]:
    return [e.tier if (e := store.index.get(ns.name, key(i))) else None for i in ids]


def usage(store: Store, tenant: str) -> dict[str, int]:
    """The tenant's bytes per tier as the quota accounting has them, checked against the index."""
    charged = {t: n for t, n in store.placement.quotas.used.get(tenant, {}).items() if n}
    counted: dict[str, int] = {}
    for ns in (A, B):
        if ns.tenant == tenant:
            for e in store.index.entries(ns.name):
                counted[e.tier] = counted.get(e.tier, 0) + e.size
    assert charged == counted
    return charged


def test_a_tenant_at_quota_pushes_out_only_its_own_blocks(tmp_path: Path) -> None:
    store = make_store(tmp_path, TenantQuota({"dram": 2 * BLOCK}))
    assert put(store, B, 10, 11, 12) == ["dram"] * 3
    # The dram has room for all, but a's quota there is 2 blocks: its own oldest went to disk.
    assert put(store, A, 0, 1, 2, 3) == ["disk", "disk", "dram", "dram"]
    assert tiers_of(store, B, 10, 11, 12) == ["dram"] * 3
    assert usage(store, "a") == {"dram": 2 * BLOCK, "disk": 2 * BLOCK}
    assert usage(store, "b") == {"dram": 3 * BLOCK}
    # A read of a disk block promotes it within the quota: another of a's goes down, not b's.
    assert store.get(A.name, [key(0)])[0] is not None
    assert tiers_of(store, A, 0, 1, 2, 3) == ["dram", "disk", "disk", "dram"]
    assert tiers_of(store, B, 10, 11, 12) == ["dram"] * 3


def test_demotion_moves_bytes_between_the_owners_tiers(tmp_path: Path) -> None:
    store = make_store(tmp_path, TenantQuota({"disk": 2 * BLOCK}), dram=4, disk=8)
    put(store, A, 0, 1, 2)
    assert usage(store, "a") == {"dram": 3 * BLOCK}
    # b's blocks fill the dram: a's are pushed down by b's room-making and land in a's disk usage;
    # a's disk quota is 2 blocks, so its third is dropped rather than charged past it.
    put(store, B, 10, 11, 12, 13)
    assert tiers_of(store, B, 10, 11, 12, 13) == ["dram"] * 4
    assert tiers_of(store, A, 0, 1, 2) == [None, "disk", "disk"]
    assert usage(store, "a") == {"disk": 2 * BLOCK}
    assert usage(store, "b") == {"dram": 4 * BLOCK}
    assert store.tier_by_name["disk"].used == 2 * BLOCK


def test_pinned_blocks_past_the_quota_are_resource_exhausted(tmp_path: Path) -> None:
    store = make_store(tmp_path, TenantQuota({"dram": 2 * BLOCK, "disk": 1 * BLOCK}))
    put(store, A, 0, 1, pin=True)
    put(store, A, 2, pin=True)
    assert tiers_of(store, A, 0, 1, 2) == ["dram", "dram", "disk"]
    before = usage(store, "a")
    with pytest.raises(ResourceExhausted, match=r"tenant 'a' is at its quota .*tenants\.a\.max_bytes"):
        put(store, A, 3, pin=True)
    with pytest.raises(ResourceExhausted, match="tenant 'a'"):
        put(store, A, 3)  # nowhere to go: every byte of its quota is pinned
    assert usage(store, "a") == before and tiers_of(store, A, 3) == [None]
    assert put(store, B, 10, 11, 12, pin=True) == ["dram"] * 3  # b has no quota
    store.unpin(A.name, [key(0)])  # now it may make room for a's next block
    assert put(store, A, 3) == ["dram"] and tiers_of(store, A, 0) == [None]  # a's disk is full of pins
    assert usage(store, "a") == before


def test_session_cap_per_tenant(tmp_path: Path) -> None:
    store = make_store(tmp_path, TenantQuota(max_sessions=2))
    put(store, A, 0, session="s1")
    store.lookup(A.name, [key(0)], session="s2")
    with pytest.raises(ResourceExhausted, match=r"tenant 'a' has 2 sessions open, at most 2"):
        put(store, A, 1, session="s3")
    assert tiers_of(store, A, 1) == [None] and "s3" not in store.sessions.sessions
    put(store, B, 10, session="b1")  # another tenant's sessions do not count
    store.sessions.close(store.sessions.sessions["s1"])
    put(store, A, 1, session="s3")
    assert store.sessions.open_per_tenant["a"] == 2


def test_config_names_a_tenant_of_its_namespaces(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tenants\.acme: no namespace has tenant: 'acme'"):
        load_settings(None, namespaces=[{"name": "n", "model": "m", "tenant": "a"}], tenants={"acme": {}})
    with pytest.raises(ConfigError, match=r"tenants\.a\.max_bytes\.ssd"):
        load_settings(
            None,
            namespaces=[{"name": "n", "model": "m", "tenant": "a"}],
            tenants={"a": {"max_bytes": {"ssd": 1}}},
        )


def test_stats_and_kvctl_report_usage_against_quota(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(
        tmp_path,
        tenants={"b": {"max_bytes": {"hbm": 2 * BLOCK, "dram": BLOCK, "disk": BLOCK}, "max_sessions": 1}},
    )
    srv = ThreadedServer(settings)
    try:
        with Client(srv.address, shared_memory=False) as kv:
            keys = kv.keys_for("other", range(12))
            kv.put("other", keys, [bytes([i]) * BLOCK for i in range(3)], session="s1")
            with pytest.raises(errors.ResourceExhausted, match="tenant 'b' has 1 sessions open"):
                kv.put("other", keys[:1], [b"\0" * BLOCK], session="s2")
            with pytest.raises(errors.ResourceExhausted, match="tenant 'b' is at its quota"):
                kv.put("other", [bytes([i]) * 16 for i in range(5)], [b"\0" * BLOCK] * 5, pin=True)
        with grpc.insecure_channel(srv.address) as ch:
            stats = pb_grpc.AdminStub(ch).Stats(pb.StatsRequest())
        row = next(t for t in stats.tenants if t.tenant == "b")
        per_tier = {t.tier: (t.used_bytes, t.quota_bytes) for t in row.tiers}
        assert per_tier["hbm"] == (2 * BLOCK, 2 * BLOCK) and per_tier["dram"] == (BLOCK, BLOCK)
        assert (row.sessions, row.max_sessions) == (1, 1)
        assert kvctl(["--address", srv.address, "stats"]) == 0
        out = capsys.readouterr().out
        assert "tenants" in out and "8.0KiB / 8.0KiB" in out and "1 / 1" in out
    finally:
        srv.stop()

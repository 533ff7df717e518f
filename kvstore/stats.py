"""What operators read: per-tier counters and a listing of blocks (Admin Stats and ListBlocks,
`kvctl`, /metrics). Each takes the store's lock once and returns copies."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Collection
from dataclasses import dataclass

from kvstore.errors import InvalidArgument, shorten
from kvstore.index import BlockEntry
from kvstore.store import Store


@dataclass(slots=True)
class TierStats:
    name: str
    device: str
    used: int
    capacity: int
    blocks: int
    pinned_blocks: int
    hits: int
    moves_in: int
    moves_out: int
    drops: int


@dataclass(slots=True)
class TenantTier:
    tier: str
    used: int
    quota: int  # 0: none
    pinned: int


@dataclass(slots=True)
class TenantStats:
    tenant: str
    tiers: list[TenantTier]
    sessions: int
    max_sessions: int  # 0: none


@dataclass(slots=True)
class StoreStats:
    tiers: list[TierStats]
    blocks: int
    misses: int
    lookups: int
    lookup_hit_blocks: int
    policy: str
    tenants: list[TenantStats]


def store_stats(store: Store) -> StoreStats:
    p = store.placement
    with store.lock:
        tiers = [
            TierStats(
                t.name,
                t.device,
                t.used,
                t.capacity,
                p.tier_blocks[t.name],
                p.pinned_blocks[t.name],
                c.hits,
                c.moves_in,
                c.moves_out,
                c.drops,
            )
            for t in store.tiers
            for c in [p.counters[t.name]]
        ]
        return StoreStats(
            tiers,
            len(store.index),
            store.misses,
            store.lookups,
            store.lookup_hit_blocks,
            store.policy.name,
            _tenants_locked(store),
        )


def _tenants_locked(store: Store) -> list[TenantStats]:
    quotas, open_now = store.placement.quotas, store.sessions.open_per_tenant
    out = []
    for tenant in quotas.tenants():
        used, pinned = quotas.used.get(tenant, {}), quotas.pinned.get(tenant, {})
        limit = quotas.limits.get(tenant)
        tiers = [
            TenantTier(t.name, used.get(t.name, 0), quotas.cap(tenant, t.name) or 0, pinned.get(t.name, 0))
            for t in store.tiers
        ]
        out.append(TenantStats(tenant, tiers, open_now[tenant], limit.max_sessions if limit else 0))
    return out


def list_blocks(
    store: Store,
    namespace: str = "",
    tier: str = "",
    limit: int = 100,
    visible: Collection[str] | None = None,
) -> tuple[list[BlockEntry], int]:
    """Up to `limit` blocks (most recently used first) and how many matched in all. `visible`:
    only these namespaces (a tenant's, when auth is on); None: all."""
    if namespace:
        store.check.namespace(namespace)
    if tier and tier not in store.tier_by_name:
        raise InvalidArgument(
            f"tier {shorten(tier)} is not one of this store's tiers: {', '.join(store.tier_by_name)}"
        )
    if limit < 1:
        raise InvalidArgument("limit must be >= 1")
    with store.lock:
        names: Collection[str | None] = (
            [namespace or None] if visible is None or namespace else sorted(visible)
        )
        matched = [e for n in names for e in store.index.entries(n) if not tier or e.tier == tier]
        newest = heapq.nlargest(limit, matched, key=lambda e: e.last_use)
        return [dataclasses.replace(e) for e in newest], len(matched)

"""Per-tenant quotas: bytes per tier and open sessions (config `tenants:`, README "Quotas").

A tenant is the `tenant:` of the namespaces a block or session belongs to. Bytes are charged to
the tenant when a slot is allocated for its block (a block placed, a move's destination, a
shared-memory reservation) and given back when the slot is freed, so bytes in flight count and two
concurrent puts cannot both slip under a quota.

For a tenant at its quota in a tier, that tier is full, and only the tenant's own blocks may be
pushed out of it to make room (`own_victim`): one tenant's room-making never pushes out another's
blocks to meet a quota. A block pushed down by anyone's room-making is charged to its own tenant in
the tier it lands in; where that tenant is at quota, its own blocks there make room in turn, or the
block is dropped (as from the bottom tier). A tenant whose quota is full of its own *pinned* blocks
gets RESOURCE_EXHAUSTED naming the quota (`check_pinned`), as the store does for a tier full of
pinned blocks.

Everything here runs under the store's lock. Its cost on the hot path is a few dict lookups per
allocation; `own_victim` walks the policy's order of a tier past other tenants' blocks, which is
paid only by a tenant at quota.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore.errors import ResourceExhausted
from kvstore.index import BlockEntry

if TYPE_CHECKING:  # policies import sessions, which import this
    from kvstore.policy.base import Policy


@dataclass(frozen=True, slots=True)
class TenantQuota:
    max_bytes: Mapping[str, int] = field(default_factory=dict)  # tier -> bytes; a tier not named: no cap
    max_sessions: int = 0  # 0: no cap


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


class Quotas:
    def __init__(self, limits: Mapping[str, TenantQuota], tenant_of: Mapping[str, str]) -> None:
        self.limits = dict(limits)
        self.tenant_of = dict(tenant_of)  # namespace -> tenant
        # tenant -> tier -> bytes allocated (in flight included) / pinned; every tenant, for stats
        self.used: dict[str, Counter[str]] = {}
        self.pinned: dict[str, Counter[str]] = {}

    def tenant(self, namespace: str) -> str:
        return self.tenant_of.get(namespace, "")

    def tenants(self) -> list[str]:
        """Every tenant a namespace names, then any other that holds something."""
        named = dict.fromkeys(self.tenant_of.values())
        return [*named, *(t for t in self.used if t not in named)]

    # ------------------------------------------------------------------ bytes (lock held)

    def cap(self, tenant: str, tier: str) -> int | None:
        quota = self.limits.get(tenant)
        return None if quota is None else quota.max_bytes.get(tier)

    def fits(self, entry: BlockEntry, tier: str) -> bool:
        """Whether `entry`'s tenant may take `entry.size` more bytes of `tier`."""
        if not self.limits:
            return True
        tenant = self.tenant(entry.namespace)
        cap = self.cap(tenant, tier)
        return cap is None or self.used.get(tenant, Counter())[tier] + entry.size <= cap

    def could_fit(self, entry: BlockEntry, tier: str) -> bool:
        """Whether the block could ever fit its tenant's quota of `tier` (room made or not)."""
        cap = self.cap(self.tenant(entry.namespace), tier) if self.limits else None
        return cap is None or entry.size <= cap

    def charge(self, entry: BlockEntry, tier: str, sign: int = 1) -> None:
        self.used.setdefault(self.tenant(entry.namespace), Counter())[tier] += sign * entry.size

    def charge_pin(self, entry: BlockEntry, tier: str, sign: int) -> None:
        self.pinned.setdefault(self.tenant(entry.namespace), Counter())[tier] += sign * entry.size

    def own_victim(self, policy: Policy, tier: str, namespace: str, below: float | None) -> BlockEntry | None:
        """The first of the tenant's own blocks to leave `tier` in the policy's order, or None."""
        tenant = self.tenant(namespace)
        for entry, score in policy.order(tier):
            if below is not None and score >= below:
                return None
            if self.tenant_of.get(entry.namespace, "") == tenant:
                return entry
        return None

    def check_pinned(
        self, tenant: str, tiers: Iterable[tuple[str, int]], pinned_new: int, unpinned: int
    ) -> None:
        """ResourceExhausted when the tenant's new pinned bytes, plus one unpinned block, cannot
        fit its quota beside what it has pinned already. `tiers`: (name, room not pinned by anyone)."""
        quota = self.limits.get(tenant)
        if quota is None or not quota.max_bytes or pinned_new + unpinned == 0:
            return
        pinned = self.pinned.get(tenant, Counter())
        room = 0
        for name, free in tiers:
            cap = quota.max_bytes.get(name)
            room += free if cap is None else max(0, min(free, cap - pinned[name]))
        if pinned_new + unpinned > room:
            caps = ", ".join(
                f"{t} {_human(pinned[t])} pinned of {_human(c)}" for t, c in quota.max_bytes.items()
            )
            raise ResourceExhausted(
                f"tenant {tenant!r} is at its quota ({caps}; tenants.{tenant}.max_bytes): this call "
                f"needs {_human(pinned_new + unpinned)} more; unpin its blocks or raise the quota"
            )

    # ------------------------------------------------------------------ sessions

    def check_sessions(self, tenant: str, open_now: int, new: int) -> None:
        quota = self.limits.get(tenant)
        if quota is not None and quota.max_sessions and open_now + new > quota.max_sessions:
            raise ResourceExhausted(
                f"tenant {tenant!r} has {open_now} sessions open, at most {quota.max_sessions} "
                f"(tenants.{tenant}.max_sessions): close finished sessions or raise the quota"
            )

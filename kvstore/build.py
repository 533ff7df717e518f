"""The composition root: the one place a store is put together, for the server and the replay.

tiers + clock + sessions + links + index  ->  StoreView (what policies read)
StoreView -> policy;  StoreView + policy + copier -> Placement;  + plan queue -> SessionActions
Placement + SessionActions + namespaces -> Store
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from kvstore.clock import Clock, RealClock
from kvstore.config import Settings
from kvstore.hashing import Namespace
from kvstore.index import Index
from kvstore.mover import Copier, Links, PlanQueue
from kvstore.persistence import recover
from kvstore.placement import Placement, StoreView
from kvstore.policy import AgentConfig, TTLConfig, make_policy
from kvstore.quotas import Quotas, TenantQuota
from kvstore.sessions import ReturnTimes, SessionRegistry
from kvstore.sessions.actions import SessionActions
from kvstore.store import Store
from kvstore.tiers.base import Tier
from kvstore.validation import Limits

log = logging.getLogger(__name__)


def compose(
    tiers: list[Tier],
    namespaces: Iterable[Namespace],
    policy: str,
    *,
    clock: Clock | None = None,
    returns: ReturnTimes | None = None,
    links: Links | None = None,
    agent: AgentConfig | None = None,
    ttl: TTLConfig | None = None,
    engine_owns_top: bool = False,
    virtual_transfers: bool = False,
    promote_on_get: bool = True,
    io_workers: int = 2,
    limits: Limits | None = None,
    max_sessions: int = 0,
    quotas: Mapping[str, TenantQuota] | None = None,
    checksums: bool = False,
) -> Store:
    """A store over these tiers (fastest first) running this policy. The replay passes a virtual
    clock, counting tiers, fixed link speeds and `virtual_transfers`; the server, the defaults."""
    if not tiers:
        raise ValueError("a store needs at least one tier")
    links = links or Links()
    namespaces = list(namespaces)
    tenant_quotas = Quotas(quotas or {}, {ns.name: ns.tenant for ns in namespaces})
    sessions = SessionRegistry(returns or ReturnTimes(), max_sessions, tenant_quotas)
    view = StoreView(clock or RealClock(), tiers, sessions, links, Index())
    chosen = make_policy(policy, view, agent, ttl, engine_owns_top)
    placement = Placement(view, chosen, Copier(links, io_workers), tenant_quotas)
    placement.checksums = checksums
    actions = SessionActions(placement, PlanQueue(), virtual_transfers)
    return Store(placement, actions, namespaces, promote_on_get, limits)


def build_store(settings: Settings) -> Store:
    """The server's store: tiers from the settings, what was learned and stored before restored."""
    from kvstore.tiers import build_tiers

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    agent = settings.agent
    store = compose(
        build_tiers(settings),
        [ns.to_namespace() for ns in settings.namespaces],
        settings.policy,
        returns=ReturnTimes(settings.data_dir / "return_times.json", agent.default_tool_s),
        links=Links(default=float(agent.link_bandwidth)),
        agent=agent,
        ttl=settings.ttl,
        promote_on_get=settings.promote_on_get,
        limits=settings.limits.to_limits(),
        max_sessions=settings.sessions.max_open,
        quotas={name: t.to_quota() for name, t in settings.tenants.items()},
        checksums=True,
    )
    recovered = recover(store)
    if recovered:
        log.info("recovered %d blocks from %s", recovered, settings.data_dir)
    return store

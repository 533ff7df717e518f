"""What one worker shares with the other workers of its deployment: the remote tier on Redis, the
global prefix index, and routing over both (`Admin.Route`).

`Deployment` wires the parts into a running store: the placement's hooks feed the index publisher
(every add, move and drop) and the remote tier (write-through of new blocks, or demotion of blocks
leaving the bottom local tier); the store asks the remote tier after its local tiers. Without a
Redis URL there is no Deployment, and `Router` still answers Route with this worker alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kvstore.config import RemoteConfig
from kvstore.global_index import IndexPublisher, prefix_per_tier, read_views
from kvstore.index import BlockEntry
from kvstore.routing import Ranked, RouteCost, WorkerView, rank
from kvstore.sessions.model import State
from kvstore.store import Store
from kvstore.tiers.redis_link import RedisLink
from kvstore.tiers.remote import RemoteTier

log = logging.getLogger(__name__)

LOAD_WINDOW_S = 30.0  # a running session seen this recently counts in the worker's load


def worker_load(store: Store) -> float:
    """This worker's load for routing, in tokens: the KV of sessions running a request right now
    (state running, named by a call in the last LOAD_WINDOW_S). A proxy for the engine's pending
    decode work, which kvstore does not see directly."""
    with store.lock:
        now = store.clock.now()
        return float(
            sum(
                s.blocks * store.namespaces[s.namespace].block_tokens
                for s in store.sessions.live()
                if s.state is State.RUNNING and s.away is None and now - s.seen <= LOAD_WINDOW_S
            )
        )


class Deployment:
    def __init__(self, store: Store, config: RemoteConfig, worker_id: str, address: str) -> None:
        assert config.url is not None
        self.store = store
        self.link = RedisLink(config.url, config.cluster, config.timeout_s)
        caps = {
            tenant: quota.max_bytes["remote"]
            for tenant, quota in store.placement.quotas.limits.items()
            if "remote" in quota.max_bytes
        }
        self.tier = RemoteTier(
            self.link,
            store.namespaces,
            int(config.capacity),
            config.write_through,
            store.read_local,
            tenant_caps=caps,
        )
        load = lambda: worker_load(store)  # noqa: E731
        self.publisher = IndexPublisher(
            self.link, store.lock, store.index, store.namespaces, worker_id, address, load
        )

    def start(self) -> None:
        placement = self.store.placement
        placement.on_change = self._changed
        if not self.tier.write_through:
            placement.on_dropped = self._dropped
        self.store.remote = self.tier
        self.link.probe()  # connected before serving when Redis is there (at most timeout_s otherwise)
        self.tier.start()
        self.publisher.start()

    def close(self) -> None:
        placement = self.store.placement
        placement.on_change = placement.on_dropped = None
        self.store.remote = None
        self.publisher.close()
        self.tier.close()
        self.link.close()

    def _changed(self, entry: BlockEntry, tier: str | None, new: bool) -> None:
        """Placement hook, under the store's lock: O(1) queue appends only."""
        self.publisher.changed(entry.namespace, entry.key, tier)
        if new and self.tier.write_through:
            self.tier.offer(entry.namespace, entry.key)

    def _dropped(self, entry: BlockEntry, data: bytes) -> None:
        """Placement hook, off the lock: a block leaving the local tiers goes to Redis."""
        self.tier.offer(entry.namespace, entry.key, entry.parent, entry.meta, data)


@dataclass(frozen=True)
class Route:
    candidates: list[Ranked]
    chain_blocks: int
    index_used: bool  # False: the global index could not be read (no Redis, or it is down)


class Router:
    """Admin.Route: candidates for a chain, ranked by `kvstore.routing`'s cost."""

    def __init__(self, store: Store, worker_id: str, address: str, deployment: Deployment | None) -> None:
        self.store = store
        self.worker_id = worker_id
        self.address = address
        self.deployment = deployment

    def route(
        self, namespace: str, keys: Sequence[bytes], prompt_tokens: int, cost: RouteCost, limit: int
    ) -> Route:
        ns = self.store.check.namespace(namespace)
        self.store.check.keys(keys)
        found = None
        if self.deployment is not None:
            found = read_views(self.deployment.link, ns, keys)
        views, remote = found if found is not None else ([], 0)
        own = self._own_view(namespace, keys, remote)
        others = [v for v in views if v.worker != self.worker_id]
        ranked = rank([own, *others], prompt_tokens, ns.block_tokens, cost)
        return Route(ranked[:limit] if limit else ranked, len(keys), found is not None)

    def _own_view(self, namespace: str, keys: Sequence[bytes], remote: int) -> WorkerView:
        """This worker from its own index (fresher than what it published), plus the `remote`
        leading blocks the remote tier holds."""
        me = self.worker_id.encode()
        with self.store.lock:
            blocks = self.store.index.blocks(namespace)
            holders = [{me: e.tier.encode()} if (e := blocks.get(k)) is not None else {} for k in keys]
        load = worker_load(self.store)
        return WorkerView(self.worker_id, self.address, prefix_per_tier(me, holders, remote), load)

"""Admin service: what operators (kvctl) call."""

from __future__ import annotations

import asyncio
import time

import grpc

from kvstore import __version__
from kvstore.deployment import Route, Router
from kvstore.errors import InvalidArgument
from kvstore.routing import RouteCost
from kvstore.server.auth import current_scope
from kvstore.server.convert import namespace_info
from kvstore.server.errors import grpc_errors
from kvstore.sessions import Session
from kvstore.shm.leases import Leases
from kvstore.stats import list_blocks, store_stats
from kvstore.store import Store
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

MAX_LIST = 10_000


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, store: Store, leases: Leases, router: Router) -> None:
        self.store = store
        self.leases = leases
        self.router = router
        self.started = time.monotonic()

    @grpc_errors
    async def Stats(self, request: pb.StatsRequest, context: grpc.aio.ServicerContext) -> pb.StatsResponse:
        s = await asyncio.to_thread(store_stats, self.store)
        return pb.StatsResponse(
            tiers=[
                pb.TierStats(
                    name=t.name,
                    device=t.device,
                    used_bytes=t.used,
                    capacity_bytes=t.capacity,
                    blocks=t.blocks,
                    pinned_blocks=t.pinned_blocks,
                    hits=t.hits,
                    moves_in=t.moves_in,
                    moves_out=t.moves_out,
                    drops=t.drops,
                    shared=self.store.tier_by_name[t.name].segment is not None,
                )
                for t in s.tiers
            ],
            leases=pb.LeaseStats(**self.leases.stats()),
            misses=s.misses,
            blocks=s.blocks,
            policy=s.policy,
            lookups=s.lookups,
            lookup_hit_blocks=s.lookup_hit_blocks,
            uptime_s=time.monotonic() - self.started,
            namespaces=[namespace_info(ns) for ns in self.store.namespaces.values()],
            tenants=[
                pb.TenantStats(
                    tenant=t.tenant,
                    sessions=t.sessions,
                    max_sessions=t.max_sessions,
                    tiers=[
                        pb.TenantTierStats(
                            tier=u.tier, used_bytes=u.used, quota_bytes=u.quota, pinned_bytes=u.pinned
                        )
                        for u in t.tiers
                    ],
                )
                for t in s.tenants
            ],
            remote=self._remote_stats(),
        )

    def _remote_stats(self) -> pb.RemoteStats | None:
        deployment = self.router.deployment
        if deployment is None:
            return None
        r, pub = deployment.tier.stats(), deployment.publisher
        return pb.RemoteStats(
            up=r.up,
            used_bytes=r.used,
            capacity_bytes=r.capacity,
            blocks=r.blocks,
            hits=r.hits,
            misses=r.misses,
            corrupt=r.corrupt,
            writes=r.writes,
            written_bytes=r.written_bytes,
            dropped_writes=r.dropped_writes,
            evictions=r.evictions,
            queued=r.queued,
            episodes=r.episodes,
            errors=r.errors,
            index_published=pub.published,
            index_republished=pub.republished,
            index_overflows=pub.dropped,
            worker_id=pub.worker_id,
        )

    @grpc_errors
    async def ListBlocks(
        self, request: pb.ListBlocksRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListBlocksResponse:
        limit = request.limit or 100
        if limit > MAX_LIST:
            raise InvalidArgument(f"limit is {limit}; at most {MAX_LIST} blocks per call")
        entries, total = await asyncio.to_thread(
            list_blocks, self.store, request.namespace, request.tier, limit, current_scope(self.store)
        )
        now = self.store.clock.now()
        return pb.ListBlocksResponse(
            total=total,
            blocks=[
                pb.BlockInfo(
                    namespace=e.namespace,
                    key=e.key,
                    parent=e.parent or b"",
                    tier=e.tier,
                    size=e.size,
                    pins=e.pins,
                    idle_s=max(0.0, now - e.last_use),
                    sessions=sorted(e.sessions or ()),
                )
                for e in entries
            ],
        )

    @grpc_errors
    async def Evict(self, request: pb.EvictRequest, context: grpc.aio.ServicerContext) -> pb.EvictResponse:
        blocks, nbytes = await asyncio.to_thread(
            self.store.evict, request.namespace, list(request.keys), request.tier, request.bytes, request.drop
        )
        return pb.EvictResponse(blocks=blocks, bytes=nbytes)

    @grpc_errors
    async def Health(self, request: pb.HealthRequest, context: grpc.aio.ServicerContext) -> pb.HealthResponse:
        tiers = [
            pb.TierHealth(name=t.name, ok=ok, detail=detail)
            for t in self.store.tiers
            for ok, detail in [t.health()]
        ]
        if self.router.deployment is not None:  # Redis down: local tiers serve on, remote reads miss
            ok, detail = self.router.deployment.link.health()
            tiers.append(pb.TierHealth(name="remote", ok=ok, detail=detail))
        return pb.HealthResponse(
            status="SERVING" if all(t.ok for t in tiers) else "DEGRADED",
            version=__version__,
            tiers=tiers,
            uptime_s=time.monotonic() - self.started,
        )

    @grpc_errors
    async def Route(self, request: pb.RouteRequest, context: grpc.aio.ServicerContext) -> pb.RouteResponse:
        if request.keys and request.tokens:
            raise InvalidArgument("give either keys or tokens, not both")
        if not request.keys and not request.tokens:
            raise InvalidArgument("give the request's prompt as keys (a chain) or tokens")
        check = self.store.check
        check.tokens(len(request.tokens))
        check.count(len(request.keys))
        weight = request.load_weight if request.HasField("load_weight") else 1.0
        if not weight >= 0:
            raise InvalidArgument(f"load_weight must be >= 0, not {weight}")

        def route() -> tuple[list[bytes], int, Route]:
            ns = check.namespace(request.namespace)
            keys = list(request.keys) or ns.chain_keys(request.tokens)
            tokens = len(request.tokens) or len(keys) * ns.block_tokens
            cost = RouteCost(load_weight=weight)
            return keys, tokens, self.router.route(request.namespace, keys, tokens, cost, request.limit)

        keys, _, found = await asyncio.to_thread(route)
        return pb.RouteResponse(
            candidates=[
                pb.RouteCandidate(
                    worker=r.view.worker,
                    address=r.view.address,
                    prefix_blocks=dict(r.view.prefix_blocks),
                    load=r.view.load,
                    cost=r.cost,
                    uncovered_tokens=r.uncovered_tokens,
                )
                for r in found.candidates
            ],
            chain_blocks=found.chain_blocks,
            index_used=found.index_used,
            keys=keys if request.tokens else [],
        )

    @grpc_errors
    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        def listed() -> list[pb.SessionInfo]:
            with self.store.lock:  # off the loop: session tables change under the hint and mover threads
                now = self.store.clock.now()
                return [session_info(s, now) for s in self.store.sessions.live()]

        return pb.ListSessionsResponse(sessions=await asyncio.to_thread(listed))


def session_info(s: Session, now: float) -> pb.SessionInfo:
    p = s.prefetch
    prefetch = pb.PrefetchInfo(status=p.status.value, bytes=p.bytes)
    if p.next_check is not None:
        prefetch.scheduled_in_s = p.next_check - now
    if p.done_at is not None:
        prefetch.done_ago_s = now - p.done_at
    info = pb.SessionInfo(
        session=s.id,
        namespace=s.namespace,
        state=s.state.value,
        prefetch=prefetch,
        bytes_per_tier={t: b for t, b in s.bytes_per_tier.items() if b},
        blocks=s.blocks,
        fanout_branches_left=s.fanout.branches_left if s.fanout else 0,
    )
    if s.tool is not None:
        info.tool_name = s.tool.tool_name
        info.in_tool_s = now - s.tool.started
        info.expected_back_in_s = s.tool.expected_end - now
    return info

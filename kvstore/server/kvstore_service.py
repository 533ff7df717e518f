"""KVStore service: what engines call. Store work runs in worker threads, never on the event loop:
the loop never waits on the store's lock or on a copy."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc

from kvstore.errors import InvalidArgument
from kvstore.index import PrefixMatch
from kvstore.plan_feed import KINDS, Subscription
from kvstore.server.convert import namespace_info
from kvstore.server.errors import grpc_errors
from kvstore.shm.leases import BlockHeader, Leases
from kvstore.store import PutBlock, Store
from kvstore.tiers.base import as_buffer
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

T = TypeVar("T")


async def _while_waited_for(context: grpc.aio.ServicerContext, write: Callable[..., T], *args: Any) -> T:
    """`write(*args, gave_up)` in a worker thread. It runs on there even when this task is
    cancelled (the client cancelled, or its deadline passed), so it asks `gave_up` as it goes and
    takes back what it did: a write (Put, Commit) nobody waits for stores nothing."""
    gave_up = threading.Event()
    context.add_done_callback(lambda _: gave_up.set())
    try:
        return await asyncio.to_thread(write, *args, gave_up.is_set)
    except asyncio.CancelledError:
        gave_up.set()
        raise


class KVStoreService(pb_grpc.KVStoreServicer):
    def __init__(self, store: Store, leases: Leases) -> None:
        self.store = store
        self.leases = leases

    @grpc_errors
    async def Put(
        self, request_iterator: AsyncIterator[pb.PutRequest], context: grpc.aio.ServicerContext
    ) -> pb.PutResponse:
        blocks: list[PutBlock] = []
        check, carried = self.store.check, 0
        async for req in request_iterator:
            block = PutBlock(
                req.namespace, req.key, req.data, req.parent or None, req.meta, req.session or None, req.pin
            )
            # Fail fast, before the stream ends: a stream is buffered until it does, so it is bounded.
            check.count(len(blocks) + 1, "blocks")
            carried += len(block.data)
            check.put_bytes(carried)
            check.block(
                block.namespace, block.key, block.parent, block.meta, len(as_buffer(block.data)), len(blocks)
            )
            check.session(block.session)
            blocks.append(block)
        if context.cancelled() or context.done():
            return pb.PutResponse()
        tiers = await _while_waited_for(context, self.store.put, blocks)
        return pb.PutResponse(
            tiers=tiers, bytes=sum(len(b.data) for b, t in zip(blocks, tiers, strict=True) if t)
        )

    @grpc_errors
    async def Get(
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetResponse]:
        results = await asyncio.to_thread(
            self.store.get,
            request.namespace,
            list(request.keys),
            request.session or None,
            request.stop_at_miss,
        )
        for key, result in zip(request.keys, results, strict=False):
            if result is None:
                yield pb.GetResponse(key=key, found=False)
            else:
                yield pb.GetResponse(
                    key=key, found=True, data=result.data, meta=result.meta, tier=result.tier
                )

    @grpc_errors
    async def Lookup(self, request: pb.LookupRequest, context: grpc.aio.ServicerContext) -> pb.LookupResponse:
        if request.keys and request.tokens:
            raise InvalidArgument("give either keys or tokens, not both")

        self.store.check.tokens(len(request.tokens))  # before any hashing: bounded work per call
        self.store.check.count(len(request.keys))

        def lookup() -> tuple[list[bytes], PrefixMatch]:
            keys = list(request.keys)
            if request.tokens:  # hashing a long prompt is work too: off the loop
                keys = self.store.check.namespace(request.namespace).chain_keys(request.tokens)
            return keys, self.store.lookup(request.namespace, keys, request.session or None)

        keys, match = await asyncio.to_thread(lookup)
        return pb.LookupResponse(
            prefix_blocks=match.blocks,
            tiers=match.tiers,
            blocks_per_tier=match.blocks_per_tier,
            keys=keys if request.tokens else [],
        )

    @grpc_errors
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        deleted = await asyncio.to_thread(self.store.delete, request.namespace, list(request.keys))
        return pb.DeleteResponse(deleted=deleted)

    @grpc_errors
    async def Pin(self, request: pb.PinRequest, context: grpc.aio.ServicerContext) -> pb.PinResponse:
        return pb.PinResponse(
            blocks=await asyncio.to_thread(self.store.pin, request.namespace, list(request.keys))
        )

    @grpc_errors
    async def Unpin(self, request: pb.PinRequest, context: grpc.aio.ServicerContext) -> pb.PinResponse:
        return pb.PinResponse(
            blocks=await asyncio.to_thread(self.store.unpin, request.namespace, list(request.keys))
        )

    @grpc_errors
    async def DescribeNamespace(
        self, request: pb.DescribeNamespaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.NamespaceInfo:
        return namespace_info(self.store.check.namespace(request.namespace))

    # ------------------------------------------------------------------ shared-memory data plane

    @grpc_errors
    async def AttachSharedMemory(
        self, request: pb.AttachSharedMemoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.AttachSharedMemoryResponse:
        segments = [
            pb.SharedSegment(tier=t.name, name=t.segment.name, size=t.segment.size, token=t.segment.token)
            for t in self.leases.shared_tiers
            if t.segment is not None
        ]
        return pb.AttachSharedMemoryResponse(segments=segments, lease_ttl_s=self.leases.ttl_s)

    @grpc_errors
    async def Reserve(
        self, request: pb.ReserveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReserveResponse:
        if request.count:
            if request.blocks or request.session or request.pin:
                raise InvalidArgument(
                    "a Reserve by count names no blocks, session or pin: they go with CommitSlots"
                )
            lease, slots = await asyncio.to_thread(
                self.leases.reserve_count, request.namespace, request.count
            )
        else:
            headers = [BlockHeader(b.key, b.size, b.parent or None, b.meta) for b in request.blocks]
            lease, slots = await asyncio.to_thread(
                self.leases.reserve, request.namespace, headers, request.session or None, request.pin
            )
        return pb.ReserveResponse(
            lease_id=lease.id,
            slots=[
                pb.Slot(key=s.key, state=s.state.value, segment=s.segment, offset=s.offset, size=s.size)
                for s in slots
            ],
            expires_in_s=self.leases.ttl_s,
            token=self.leases.token,
        )

    @grpc_errors
    async def Commit(self, request: pb.LeaseRequest, context: grpc.aio.ServicerContext) -> pb.CommitResponse:
        stored = await _while_waited_for(context, self.leases.commit, request.lease_id)
        return pb.CommitResponse(tiers=[tier for _, tier in stored])

    @grpc_errors
    async def CommitSlots(
        self, request: pb.CommitSlotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CommitResponse:
        blocks = [
            (b.lease_id, b.slot, BlockHeader(b.key, 0, b.parent or None, b.meta)) for b in request.blocks
        ]
        stored = await _while_waited_for(
            context, self.leases.commit_slots, blocks, request.session or None, request.pin
        )
        return pb.CommitResponse(tiers=[tier for _, tier in stored])

    @grpc_errors
    async def Acquire(
        self, request: pb.AcquireRequest, context: grpc.aio.ServicerContext
    ) -> pb.AcquireResponse:
        lease, blocks = await asyncio.to_thread(
            self.leases.acquire,
            request.namespace,
            list(request.keys),
            request.session or None,
            request.stop_at_miss,
        )
        out = [
            pb.LeasedBlock(key=key, found=False)
            if b is None
            else pb.LeasedBlock(
                key=key,
                found=True,
                meta=b.meta,
                tier=b.tier,
                segment=b.segment,
                offset=b.offset,
                size=b.size,
                inline=b.data is not None,
                data=b.data or b"",
                checksum=b.checksum,
            )
            for key, b in zip(request.keys, blocks, strict=False)
        ]
        return pb.AcquireResponse(
            lease_id=lease.id, blocks=out, expires_in_s=self.leases.ttl_s, token=self.leases.token
        )

    @grpc_errors
    async def Release(
        self, request: pb.LeaseRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseResponse:
        return pb.ReleaseResponse(valid=await asyncio.to_thread(self.leases.release, request.lease_id))

    # ------------------------------------------------------------------ plans for the engine side

    @grpc_errors
    async def WatchPlans(
        self, request: pb.WatchPlansRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.PlanEvent]:
        unknown = sorted(set(request.kinds) - set(KINDS))
        if unknown:
            raise InvalidArgument(f"unknown plan kinds {unknown}; known: {', '.join(KINDS)}")
        if request.namespace:
            self.store.check.namespace(request.namespace)  # NOT_FOUND for a namespace the server lacks
        # The feed publishes on the mover's thread: it only sets this loop's event, never waits.
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        subscription = Subscription(
            request.namespace, request.kinds, lambda: loop.call_soon_threadsafe(ready.set)
        )
        feed = self.store.plan_feed
        feed.subscribe(subscription)
        try:
            while True:
                await ready.wait()
                ready.clear()
                events, dropped = subscription.drain()
                now = time.monotonic()
                for event in events:
                    yield pb.PlanEvent(
                        kind=event.kind,
                        session=event.session,
                        namespace=event.namespace,
                        due_in_s=event.due_in_s_at(now),
                        bytes=event.bytes,
                        dropped_before=dropped,
                    )
                    dropped = 0
        finally:  # the client cancelled, or the server stops
            feed.unsubscribe(subscription)

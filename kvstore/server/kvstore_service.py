"""KVStore service: what engines call. Store work runs in threads so copies never block the loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from kvstore.errors import InvalidArgument
from kvstore.server.convert import namespace_info
from kvstore.server.errors import grpc_errors
from kvstore.store import PutBlock, Store
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class KVStoreService(pb_grpc.KVStoreServicer):
    def __init__(self, store: Store) -> None:
        self.store = store

    @grpc_errors
    async def Put(
        self, request_iterator: AsyncIterator[pb.PutRequest], context: grpc.aio.ServicerContext
    ) -> pb.PutResponse:
        blocks: list[PutBlock] = []
        async for req in request_iterator:
            block = PutBlock(
                req.namespace, req.key, req.data, req.parent or None, req.meta, req.session or None, req.pin
            )
            self.store.validate_put(block, len(blocks))  # fail fast, before the stream ends
            blocks.append(block)
        tiers = await asyncio.to_thread(self.store.put, blocks)
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
        keys = list(request.keys)
        if request.tokens:
            keys = self.store.namespace(request.namespace).chain_keys(request.tokens)
        match = await asyncio.to_thread(self.store.lookup, request.namespace, keys, request.session or None)
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
        return namespace_info(self.store.namespace(request.namespace))

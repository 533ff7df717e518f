"""asyncio twin of `Client`: same methods, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import grpc
from kvstore.sdk import core, shm
from kvstore.sdk.core import LookupResult, NamespaceInfo, StoredBlock

from kvstore import errors
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class AsyncClient:
    def __init__(
        self,
        address: str = core.DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        max_message_bytes: int = core.DEFAULT_MAX_MESSAGE,
        shared_memory: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._segments: shm.Segments | None = None
        self._attached = not shared_memory
        self._attach_lock = asyncio.Lock()
        self._channel = grpc.aio.insecure_channel(
            core.target(address), options=core.channel_options(max_message_bytes)
        )
        self._kv = pb_grpc.KVStoreStub(self._channel)
        self._namespaces: dict[str, NamespaceInfo] = {}

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()
        if self._segments is not None:
            self._segments.close()
            self._segments = None

    async def transport(self) -> str:
        """'shm' when block bytes go through shared memory, else 'grpc'."""
        return "shm" if await self._shared() is not None else "grpc"

    async def _shared(self) -> shm.Segments | None:
        if not self._attached:
            async with self._attach_lock:
                if not self._attached:
                    try:
                        reply = await self._kv.AttachSharedMemory(
                            pb.AttachSharedMemoryRequest(), timeout=self.timeout
                        )
                        self._segments = shm.attach(reply)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                            raise core.translate(exc) from None
                    self._attached = True
        return self._segments

    def _detach(self) -> None:
        """The server restarted with new segments: map them again on the next call."""
        self._segments = None
        self._attached = False

    async def _stale(self, segments: shm.Segments, reply: Any) -> bool:
        """A lease reply naming other segments than ours (the server restarted): give the lease
        back and map the new segments on the next call."""
        if reply.token == segments.token:
            return False
        await self._call(self._kv.Release, pb.LeaseRequest(lease_id=reply.lease_id))
        self._detach()
        return True

    async def _call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

    async def namespace(self, name: str) -> NamespaceInfo:
        if name not in self._namespaces:
            reply = await self._call(self._kv.DescribeNamespace, pb.DescribeNamespaceRequest(namespace=name))
            self._namespaces[name] = core.namespace_result(reply)
        return self._namespaces[name]

    async def keys_for(self, namespace: str, tokens: Sequence[int]) -> list[bytes]:
        return (await self.namespace(namespace)).chain_keys(tokens)

    async def put(
        self,
        namespace: str,
        keys: Sequence[bytes],
        blocks: Sequence[Any],
        *,
        parent: bytes | None = None,
        session: str | None = None,
        pin: bool = False,
        metas: Sequence[bytes] | None = None,
    ) -> list[str]:
        chain = core.chain_blocks(keys, blocks, parent, metas)
        segments = await self._shared()
        if segments is None or not chain:
            return await self._put_grpc(namespace, chain, session, pin)
        step = segments.round_blocks((await self.namespace(namespace)).block_bytes)
        tiers: list[str] = []
        for start in range(0, len(chain), step):
            part = chain[start : start + step]
            done = await self._put_shared(segments, namespace, part, session, pin)
            tiers += done if done is not None else await self._put_grpc(namespace, part, session, pin)
        return tiers

    async def _put_grpc(
        self, namespace: str, chain: Sequence[core.ChainBlock], session: str | None, pin: bool
    ) -> list[str]:
        requests = list(core.put_requests(namespace, chain, session, pin))
        return list((await self._call(self._kv.Put, iter(requests))).tiers)

    async def _put_shared(
        self,
        segments: shm.Segments,
        namespace: str,
        chain: Sequence[core.ChainBlock],
        session: str | None,
        pin: bool,
    ) -> list[str] | None:
        started = time.monotonic()
        request, views = core.reserve_request(namespace, chain, session, pin)
        reply = await self._call(self._kv.Reserve, request)
        lease = pb.LeaseRequest(lease_id=reply.lease_id)
        if await self._stale(segments, reply):
            return None
        try:
            no_room = core.write_slots(segments, reply, views, core.lease_deadline(started, reply))
        except core.LeaseRunningOut:
            await self._call(self._kv.Release, lease)
            return None
        except BaseException:
            await self._call(self._kv.Release, lease)
            raise
        try:
            tiers = list((await self._call(self._kv.Commit, lease)).tiers)
        except errors.FailedPrecondition:
            return None
        if no_room:
            sent = await self._put_grpc(namespace, [chain[i] for i in no_room], session, pin)
            for i, tier in zip(no_room, sent, strict=True):
                tiers[i] = tier
        return tiers

    async def get(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[Any]:
        return core.decoded(await self.fetch(namespace, keys, session=session, stop_at_miss=stop_at_miss))

    async def fetch(
        self,
        namespace: str,
        keys: Sequence[bytes],
        *,
        session: str | None = None,
        stop_at_miss: bool = False,
        into: Sequence[Any] | None = None,
    ) -> list[StoredBlock | None]:
        if into is not None and len(into) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(into)} buffers to read into")
        segments = await self._shared()
        if segments is not None:
            request = pb.AcquireRequest(
                namespace=namespace, keys=list(keys), session=session or "", stop_at_miss=stop_at_miss
            )
            reply = await self._call(self._kv.Acquire, request)
            lease = pb.LeaseRequest(lease_id=reply.lease_id)
            if not await self._stale(segments, reply):
                try:
                    blocks = core.read_leased(segments, reply, keys, into)
                finally:
                    released = await self._call(self._kv.Release, lease)
                if released.valid:
                    return blocks
        call = self._kv.Get(core.get_request(namespace, keys, session, stop_at_miss), timeout=self.timeout)
        try:
            blocks = core.stored_blocks(keys, [reply async for reply in call])
        except grpc.RpcError as exc:
            raise core.translate(exc) from None
        return blocks if into is None else core.copy_stored(blocks, into)

    async def lookup(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        session: str | None = None,
    ) -> LookupResult:
        reply = await self._call(self._kv.Lookup, core.lookup_request(namespace, keys, tokens, session))
        return core.lookup_result(reply, keys)

    async def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        return (
            await self._call(self._kv.Delete, pb.DeleteRequest(namespace=namespace, keys=list(keys)))
        ).deleted

    async def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return (await self._call(self._kv.Pin, pb.PinRequest(namespace=namespace, keys=list(keys)))).blocks

    async def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return (await self._call(self._kv.Unpin, pb.PinRequest(namespace=namespace, keys=list(keys)))).blocks

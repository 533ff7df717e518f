"""asyncio twin of `Client`: same methods, awaited."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from kvstore.sdk import core
from kvstore.sdk.core import LookupResult, NamespaceInfo, StoredBlock

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class AsyncClient:
    def __init__(
        self,
        address: str = core.DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        max_message_bytes: int = core.DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.address = address
        self.timeout = timeout
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
        requests = list(core.put_requests(namespace, keys, blocks, parent, session, pin, metas))
        return list((await self._call(self._kv.Put, iter(requests))).tiers)

    async def get(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[Any]:
        call = self._kv.Get(core.get_request(namespace, keys, session, stop_at_miss), timeout=self.timeout)
        try:
            return core.fill_misses(keys, [reply async for reply in call])
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

    async def fetch(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[StoredBlock | None]:
        call = self._kv.Get(core.get_request(namespace, keys, session, stop_at_miss), timeout=self.timeout)
        try:
            return core.stored_blocks(keys, [reply async for reply in call])
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

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

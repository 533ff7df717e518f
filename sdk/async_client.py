"""asyncio twin of `Client`: the same methods, awaited; both run the operations of `ClientBase`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import grpc
from kvstore.sdk import auth, core
from kvstore.sdk.base import ClientBase, Op, Rpc
from kvstore.sdk.core import LookupResult, NamespaceInfo, PlanEvent, RouteResult, StoredBlock

T = TypeVar("T")


class AsyncClient(ClientBase):
    """Blocks in and out of a kvstore server, for asyncio code (see `Client`)."""

    def _open_channel(self, target: str, options: list[tuple[str, int]]) -> grpc.aio.Channel:
        return auth.aio_channel(target, options, self._token, self._tls)

    async def _run(self, op: Op[T]) -> T:
        """Drive an operation: each RPC it yields is awaited here."""
        send: Any = op.send
        value: Any = None
        while True:
            try:
                rpc = send(value)
            except StopIteration as done:
                return done.value
            try:
                value, send = await self._invoke(rpc), op.send
            except grpc.RpcError as exc:
                value, send = core.translate(exc), op.throw

    async def _invoke(self, rpc: Rpc) -> Any:
        method = getattr(self._admin if rpc.admin else self._kv, rpc.method)
        if rpc.streams:
            return [reply async for reply in method(rpc.request, timeout=self.timeout)]
        # a Put's blocks are encoded before the call, not on the event loop's callbacks
        request = iter(list(rpc.request)) if isinstance(rpc.request, Iterator) else rpc.request
        return await method(request, timeout=self.timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()
        self._drop_segments()

    async def transport(self) -> str:
        """'shm' when block bytes go through shared memory, else 'grpc'."""
        return await self._run(self._transport())

    async def namespace(self, name: str) -> NamespaceInfo:
        """Block size and hashing of a namespace (cached)."""
        return await self._run(self._namespace(name))

    async def keys_for(self, namespace: str, tokens: Sequence[int]) -> list[bytes]:
        """Keys of the full blocks of `tokens`, as the server computes them."""
        return await self._run(self._keys_for(namespace, tokens))

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
        """Store a chain of blocks; returns the tier each landed in (see `Client.put`)."""
        return await self._run(self._put(namespace, keys, blocks, parent, session, pin, metas))

    async def get(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[Any]:
        """Blocks in key order (bytes, or tensors when put as tensors); None where not stored."""
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
        """Blocks as stored (bytes, meta, tier) in key order (see `Client.fetch`)."""
        return await self._run(self._fetch(namespace, keys, session, stop_at_miss, into))

    async def lookup(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        session: str | None = None,
    ) -> LookupResult:
        """How long a prefix of the chain (keys, or tokens the server hashes) is stored, and where."""
        return await self._run(self._lookup(namespace, keys, tokens, session))

    async def route(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        load_weight: float | None = None,
        limit: int = 0,
    ) -> RouteResult:
        """Workers to send a request with this prompt to, best first (see `Client.route`)."""
        return await self._run(self._route(namespace, keys, tokens, load_weight, limit))

    async def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        return await self._run(self._delete(namespace, keys))

    async def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return await self._run(self._pin("Pin", namespace, keys))

    async def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return await self._run(self._pin("Unpin", namespace, keys))

    async def watch_plans(
        self, namespace: str = "", *, kinds: Sequence[str] = ("warm",), for_s: float | None = None
    ) -> AsyncIterator[PlanEvent]:
        """Plans as the server executes them (see `Client.watch_plans`)."""
        call = self._kv.WatchPlans(core.watch_request(namespace, kinds), timeout=for_s)
        try:
            async for reply in call:
                yield core.plan_event(reply)
        except grpc.RpcError as exc:
            if not core.stream_ended(exc, for_s):
                raise core.translate(exc) from None
        finally:
            call.cancel()

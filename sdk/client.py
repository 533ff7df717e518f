"""Synchronous client. Its twin, `AsyncClient`, has the same methods as coroutines; both run the
operations of `ClientBase`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import grpc
from kvstore.sdk import auth, core
from kvstore.sdk.base import ClientBase, Op, Rpc
from kvstore.sdk.core import LookupResult, NamespaceInfo, PlanEvent, RouteResult, StoredBlock

T = TypeVar("T")


class Client(ClientBase):
    """Blocks in and out of a kvstore server.

    >>> with Client("127.0.0.1:50551") as kv:
    ...     keys = kv.keys_for("default", tokens)
    ...     kv.put("default", keys, blocks)          # bytes or torch tensors
    ...     kv.lookup("default", tokens=tokens).prefix_blocks

    On the server's host, block bytes go through shared memory (gRPC carries only handles);
    elsewhere, or with `shared_memory=False`, they stream over gRPC. `transport()` says which.
    """

    def _open_channel(self, target: str, options: list[tuple[str, int]]) -> grpc.Channel:
        return auth.channel(target, options, self._token, self._tls)

    def _run(self, op: Op[T]) -> T:
        """Drive an operation: each RPC it yields is called here, blocking."""
        send: Any = op.send
        value: Any = None
        while True:
            try:
                rpc = send(value)
            except StopIteration as done:
                return done.value
            try:
                value, send = self._invoke(rpc), op.send
            except grpc.RpcError as exc:
                value, send = core.translate(exc), op.throw

    def _invoke(self, rpc: Rpc) -> Any:
        reply = getattr(self._admin if rpc.admin else self._kv, rpc.method)(rpc.request, timeout=self.timeout)
        return list(reply) if rpc.streams else reply

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        self._drop_segments()

    def transport(self) -> str:
        """'shm' when block bytes go through shared memory, else 'grpc'."""
        return self._run(self._transport())

    def namespace(self, name: str) -> NamespaceInfo:
        """Block size and hashing of a namespace (cached)."""
        return self._run(self._namespace(name))

    def keys_for(self, namespace: str, tokens: Sequence[int]) -> list[bytes]:
        """Keys of the full blocks of `tokens`, as the server computes them."""
        return self._run(self._keys_for(namespace, tokens))

    def put(
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
        """Store a chain of blocks; returns the tier each landed in ("" if it could not be kept).
        `metas`: opaque bytes kept with each block (returned by `fetch`) instead of the SDK's tensor
        description. Over shared memory a big chain goes in rounds, and a tier is where the block
        was when its round was committed: later rounds may push it down."""
        return self._run(self._put(namespace, keys, blocks, parent, session, pin, metas))

    def get(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[Any]:
        """Blocks in key order (bytes, or tensors when put as tensors); None where not stored."""
        return core.decoded(self.fetch(namespace, keys, session=session, stop_at_miss=stop_at_miss))

    def fetch(
        self,
        namespace: str,
        keys: Sequence[bytes],
        *,
        session: str | None = None,
        stop_at_miss: bool = False,
        into: Sequence[Any] | None = None,
    ) -> list[StoredBlock | None]:
        """Blocks as stored (bytes, meta, tier) in key order; None where not stored. `into`: one
        writable buffer or contiguous CPU tensor per key, filled in place (data is then that buffer)."""
        return self._run(self._fetch(namespace, keys, session, stop_at_miss, into))

    def lookup(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        session: str | None = None,
    ) -> LookupResult:
        """How long a prefix of the chain (keys, or tokens the server hashes) is stored, and where."""
        return self._run(self._lookup(namespace, keys, tokens, session))

    def route(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        load_weight: float | None = None,
        limit: int = 0,
    ) -> RouteResult:
        """Workers to send a request with this prompt (keys, or tokens the server hashes) to, best
        first: each with its address, the prefix blocks it can serve per tier, its load and its
        cost (uncovered prefill tokens + tier fetch penalties + load_weight x load; 0 chases cache
        hits only). Ask any worker of a deployment on Redis; a lone worker names itself."""
        return self._run(self._route(namespace, keys, tokens, load_weight, limit))

    def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._run(self._delete(namespace, keys))

    def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._run(self._pin("Pin", namespace, keys))

    def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._run(self._pin("Unpin", namespace, keys))

    def watch_plans(
        self, namespace: str = "", *, kinds: Sequence[str] = ("warm",), for_s: float | None = None
    ) -> Iterator[PlanEvent]:
        """Plans as the server executes them (a warm: a session is due back, send its warm request).
        Ends quietly after `for_s` seconds (None: runs until closed, or until this client is
        closed from another thread); a broken stream raises `KVStoreError` (watch again)."""
        call = self._kv.WatchPlans(core.watch_request(namespace, kinds), timeout=for_s)
        try:
            for reply in call:
                yield core.plan_event(reply)
        except grpc.RpcError as exc:
            if not core.stream_ended(exc, for_s):
                raise core.translate(exc) from None
        finally:
            call.cancel()

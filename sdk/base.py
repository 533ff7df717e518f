"""Every client operation, written once for both clients.

An operation is a generator that does no I/O itself (sans-I/O): it yields the RPCs it needs as
`Rpc` values and gets each reply back from `yield`, or the call's `KVStoreError` raised at the
`yield`. `Client` drives an operation with blocking calls and `AsyncClient` with awaited ones;
that loop, the channel and the context-manager protocol are all that differs between the twins
(httpx's sync/async twins are the model).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kvstore.sdk import auth, core, shm
from kvstore.sdk.core import LookupResult, NamespaceInfo, RouteResult, StoredBlock

from kvstore import errors
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Rpc:
    """One call an operation needs: the method's name and its request (an iterator of requests
    for Put). `streams`: the reply is a stream, handed back as a list. `admin`: an Admin method
    (else KVStore)."""

    method: str
    request: Any
    streams: bool = False
    admin: bool = False


Op = Generator[Rpc, Any, T]


class ClientBase:
    """State and operations shared by `Client` and `AsyncClient` (subclasses open the channel and
    drive the operations)."""

    def __init__(
        self,
        address: str = core.DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        max_message_bytes: int = core.DEFAULT_MAX_MESSAGE,
        shared_memory: bool = True,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        tls: bool = False,
    ) -> None:
        """`token`: the bearer token (default $KVSTORE_TOKEN). TLS is on with `tls=True` or any of
        `root_certificates` (PEM CA of the server's cert), `private_key` + `certificate_chain`
        (a client certificate, for servers that require one)."""
        self.address = address
        self.timeout = timeout
        self._token = auth.resolve_token(token)
        self._tls = auth.tls_config(root_certificates, private_key, certificate_chain, tls)
        self._segments: shm.Segments | None = None
        self._attached = not shared_memory  # True once we know whether shared memory is usable
        self._attach_lock = threading.Lock()  # held for bookkeeping only, never across a call
        self._channel = self._open_channel(core.target(address), core.channel_options(max_message_bytes))
        self._kv = pb_grpc.KVStoreStub(self._channel)
        self._admin = pb_grpc.AdminStub(self._channel)
        self._namespaces: dict[str, NamespaceInfo] = {}

    def _open_channel(self, target: str, options: list[tuple[str, int]]) -> Any:
        raise NotImplementedError

    def _drop_segments(self) -> None:
        if self._segments is not None:
            self._segments.close()
            self._segments = None

    # ---------------------------------------------------------------- shared memory

    def _shared(self) -> Op[shm.Segments | None]:
        if self._attached:
            return self._segments
        try:
            reply = yield Rpc("AttachSharedMemory", pb.AttachSharedMemoryRequest())
        except errors.KVStoreError as exc:
            if exc.code != "UNIMPLEMENTED":  # an older server: stay on gRPC
                raise
            reply = None
        with self._attach_lock:
            if not self._attached:  # another caller may have attached meanwhile
                self._segments = shm.attach(reply) if reply is not None else None
                self._attached = True
            return self._segments

    def _detach(self) -> None:
        """The server restarted with new segments: map them again on the next call. The old
        mapping is dropped, not closed, since another thread may still copy from it."""
        with self._attach_lock:
            self._segments = None
            self._attached = False

    def _commit_written(self, lease_id: int, write: Callable[[], T]) -> Op[tuple[T, list[str]] | None]:
        """Run `write` (the copies into a write lease's slots), then Commit: its result and the
        tiers; None when the lease ran out or ended first (then nothing was stored). A write that
        fails gives the lease back."""
        lease = pb.LeaseRequest(lease_id=lease_id)
        try:
            written = write()
        except core.LeaseRunningOut:
            yield Rpc("Release", lease)
            return None
        except BaseException:
            yield Rpc("Release", lease)
            raise
        try:
            tiers = list((yield Rpc("Commit", lease)).tiers)
        except errors.FailedPrecondition:
            return None
        return written, tiers

    def _stale(self, segments: shm.Segments, reply: Any) -> Op[bool]:
        """A lease reply naming other segments than ours (the server restarted): give the lease
        back and map the new segments on the next call."""
        if reply.token == segments.token:
            return False
        yield Rpc("Release", pb.LeaseRequest(lease_id=reply.lease_id))
        self._detach()
        return True

    def _transport(self) -> Op[str]:
        return "shm" if (yield from self._shared()) is not None else "grpc"

    # ---------------------------------------------------------------- operations

    def _namespace(self, name: str) -> Op[NamespaceInfo]:
        if name not in self._namespaces:
            reply = yield Rpc("DescribeNamespace", pb.DescribeNamespaceRequest(namespace=name))
            self._namespaces[name] = core.namespace_result(reply)
        return self._namespaces[name]

    def _keys_for(self, namespace: str, tokens: Sequence[int]) -> Op[list[bytes]]:
        return (yield from self._namespace(namespace)).chain_keys(tokens)

    def _put(
        self,
        namespace: str,
        keys: Sequence[bytes],
        blocks: Sequence[Any],
        parent: bytes | None,
        session: str | None,
        pin: bool,
        metas: Sequence[bytes] | None,
    ) -> Op[list[str]]:
        chain = core.chain_blocks(keys, blocks, parent, metas)
        segments = yield from self._shared()
        if segments is None or not chain:
            return (yield from self._put_grpc(namespace, chain, session, pin))
        step = segments.round_blocks((yield from self._namespace(namespace)).block_bytes)
        tiers: list[str] = []
        for start in range(0, len(chain), step):
            part = chain[start : start + step]
            done = yield from self._put_shared(segments, namespace, part, session, pin)
            tiers += done if done is not None else (yield from self._put_grpc(namespace, part, session, pin))
        return tiers

    def _put_grpc(
        self, namespace: str, chain: Sequence[core.ChainBlock], session: str | None, pin: bool
    ) -> Op[list[str]]:
        reply = yield Rpc("Put", core.put_requests(namespace, chain, session, pin))
        return list(reply.tiers)

    def _put_shared(
        self,
        segments: shm.Segments,
        namespace: str,
        chain: Sequence[core.ChainBlock],
        session: str | None,
        pin: bool,
    ) -> Op[list[str] | None]:
        """Reserve, copy in place, commit; None when the lease ran out (then nothing was stored)."""
        started = time.monotonic()
        request, views = core.reserve_request(namespace, chain, session, pin)
        reply = yield Rpc("Reserve", request)
        if (yield from self._stale(segments, reply)):
            return None
        deadline = core.lease_deadline(started, reply)
        done = yield from self._commit_written(
            reply.lease_id, lambda: core.write_slots(segments, reply, views, deadline)
        )
        if done is None:
            return None
        no_room, tiers = done
        if no_room:
            sent = yield from self._put_grpc(namespace, [chain[i] for i in no_room], session, pin)
            for i, tier in zip(no_room, sent, strict=True):
                tiers[i] = tier
        return tiers

    def _fetch(
        self,
        namespace: str,
        keys: Sequence[bytes],
        session: str | None,
        stop_at_miss: bool,
        into: Sequence[Any] | None,
    ) -> Op[list[StoredBlock | None]]:
        if into is not None and len(into) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(into)} buffers to read into")
        segments = yield from self._shared()
        if segments is not None:
            blocks = yield from self._fetch_shared(segments, namespace, keys, session, stop_at_miss, into)
            if blocks is not None:
                return blocks
        replies = yield Rpc("Get", core.get_request(namespace, keys, session, stop_at_miss), streams=True)
        blocks = core.stored_blocks(keys, replies)
        return blocks if into is None else core.copy_stored(blocks, into)

    def _fetch_shared(
        self,
        segments: shm.Segments,
        namespace: str,
        keys: Sequence[bytes],
        session: str | None,
        stop_at_miss: bool,
        into: Sequence[Any] | None,
    ) -> Op[list[StoredBlock | None] | None]:
        """Acquire, copy out, release; None when the lease expired first (what was read is void)."""
        request = pb.AcquireRequest(
            namespace=namespace, keys=list(keys), session=session or "", stop_at_miss=stop_at_miss
        )
        reply = yield Rpc("Acquire", request)
        lease = pb.LeaseRequest(lease_id=reply.lease_id)
        if (yield from self._stale(segments, reply)):
            return None
        try:
            blocks = core.read_leased(segments, reply, keys, into)
        except core.ChangedInPlace:  # over gRPC the server checks it too, and drops it: a miss
            blocks = None
        finally:
            valid = (yield Rpc("Release", lease)).valid
        return blocks if valid else None

    def _lookup(
        self,
        namespace: str,
        keys: Sequence[bytes] | None,
        tokens: Sequence[int] | None,
        session: str | None,
    ) -> Op[LookupResult]:
        reply = yield Rpc("Lookup", core.lookup_request(namespace, keys, tokens, session))
        return core.lookup_result(reply, keys)

    def _route(
        self,
        namespace: str,
        keys: Sequence[bytes] | None,
        tokens: Sequence[int] | None,
        load_weight: float | None,
        limit: int,
    ) -> Op[RouteResult]:
        request = core.route_request(namespace, keys, tokens, load_weight, limit)
        return core.route_result((yield Rpc("Route", request, admin=True)), keys)

    def _delete(self, namespace: str, keys: Sequence[bytes]) -> Op[int]:
        return (yield Rpc("Delete", pb.DeleteRequest(namespace=namespace, keys=list(keys)))).deleted

    def _pin(self, method: str, namespace: str, keys: Sequence[bytes]) -> Op[int]:
        return (yield Rpc(method, pb.PinRequest(namespace=namespace, keys=list(keys)))).blocks

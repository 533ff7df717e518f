"""Synchronous client. Its twin, `AsyncClient`, has the same methods as coroutines."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from kvstore.sdk import core, shm
from kvstore.sdk.core import LookupResult, NamespaceInfo, StoredBlock

from kvstore import errors
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class Client:
    """Blocks in and out of a kvstore server.

    >>> with Client("127.0.0.1:50551") as kv:
    ...     keys = kv.keys_for("default", tokens)
    ...     kv.put("default", keys, blocks)          # bytes or torch tensors
    ...     kv.lookup("default", tokens=tokens).prefix_blocks

    On the server's host, block bytes go through shared memory (gRPC carries only handles);
    elsewhere, or with `shared_memory=False`, they stream over gRPC. `transport` says which.
    """

    def __init__(
        self,
        address: str = core.DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        max_message_bytes: int = core.DEFAULT_MAX_MESSAGE,
        shared_memory: bool = True,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._want_shm = shared_memory
        self._segments: shm.Segments | None = None
        self._attached = not shared_memory  # True once we know whether shared memory is usable
        self._attach_lock = threading.Lock()
        self._channel = grpc.insecure_channel(
            core.target(address), options=core.channel_options(max_message_bytes)
        )
        self._kv = pb_grpc.KVStoreStub(self._channel)
        self._namespaces: dict[str, NamespaceInfo] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()
        if self._segments is not None:
            self._segments.close()
            self._segments = None

    @property
    def transport(self) -> str:
        """'shm' when block bytes go through shared memory, else 'grpc'."""
        return "shm" if self._shared() is not None else "grpc"

    def _shared(self) -> shm.Segments | None:
        if not self._attached:
            with self._attach_lock:
                if not self._attached:
                    try:
                        reply = self._kv.AttachSharedMemory(
                            pb.AttachSharedMemoryRequest(), timeout=self.timeout
                        )
                        self._segments = shm.attach(reply)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # an older server: stay on gRPC
                            raise core.translate(exc) from None
                    self._attached = True
        return self._segments

    def _detach(self) -> None:
        """The server restarted with new segments: map them again on the next call. The old
        mapping is dropped, not closed, since another thread may still copy from it."""
        with self._attach_lock:
            self._segments = None
            self._attached = False

    def _stale(self, segments: shm.Segments, reply: Any) -> bool:
        """A lease reply naming other segments than ours (the server restarted): give the lease
        back and map the new segments on the next call."""
        if reply.token == segments.token:
            return False
        self._call(self._kv.Release, pb.LeaseRequest(lease_id=reply.lease_id))
        self._detach()
        return True

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

    def namespace(self, name: str) -> NamespaceInfo:
        """Block size and hashing of a namespace (cached)."""
        if name not in self._namespaces:
            reply = self._call(self._kv.DescribeNamespace, pb.DescribeNamespaceRequest(namespace=name))
            self._namespaces[name] = core.namespace_result(reply)
        return self._namespaces[name]

    def keys_for(self, namespace: str, tokens: Sequence[int]) -> list[bytes]:
        return self.namespace(namespace).chain_keys(tokens)

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
        chain = core.chain_blocks(keys, blocks, parent, metas)
        segments = self._shared()
        if segments is None or not chain:
            return self._put_grpc(namespace, chain, session, pin)
        step = segments.round_blocks((self.namespace(namespace)).block_bytes)
        tiers: list[str] = []
        for start in range(0, len(chain), step):
            part = chain[start : start + step]
            done = self._put_shared(segments, namespace, part, session, pin)
            tiers += done if done is not None else self._put_grpc(namespace, part, session, pin)
        return tiers

    def _put_grpc(
        self, namespace: str, chain: Sequence[core.ChainBlock], session: str | None, pin: bool
    ) -> list[str]:
        return list(self._call(self._kv.Put, core.put_requests(namespace, chain, session, pin)).tiers)

    def _put_shared(
        self,
        segments: shm.Segments,
        namespace: str,
        chain: Sequence[core.ChainBlock],
        session: str | None,
        pin: bool,
    ) -> list[str] | None:
        """Reserve, copy in place, commit; None when the lease ran out (then nothing was stored)."""
        started = time.monotonic()
        request, views = core.reserve_request(namespace, chain, session, pin)
        reply = self._call(self._kv.Reserve, request)
        lease = pb.LeaseRequest(lease_id=reply.lease_id)
        if self._stale(segments, reply):
            return None
        try:
            no_room = core.write_slots(segments, reply, views, core.lease_deadline(started, reply))
        except core.LeaseRunningOut:
            self._call(self._kv.Release, lease)
            return None
        except BaseException:
            self._call(self._kv.Release, lease)
            raise
        try:
            tiers = list(self._call(self._kv.Commit, lease).tiers)
        except errors.FailedPrecondition:
            return None
        if no_room:
            sent = self._put_grpc(namespace, [chain[i] for i in no_room], session, pin)
            for i, tier in zip(no_room, sent, strict=True):
                tiers[i] = tier
        return tiers

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
        if into is not None and len(into) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(into)} buffers to read into")
        segments = self._shared()
        if segments is not None:
            blocks = self._fetch_shared(segments, namespace, keys, session, stop_at_miss, into)
            if blocks is not None:
                return blocks
        replies = self._call(self._kv.Get, core.get_request(namespace, keys, session, stop_at_miss))
        try:
            blocks = core.stored_blocks(keys, list(replies))
        except grpc.RpcError as exc:
            raise core.translate(exc) from None
        return blocks if into is None else core.copy_stored(blocks, into)

    def _fetch_shared(
        self,
        segments: shm.Segments,
        namespace: str,
        keys: Sequence[bytes],
        session: str | None,
        stop_at_miss: bool,
        into: Sequence[Any] | None,
    ) -> list[StoredBlock | None] | None:
        """Acquire, copy out, release; None when the lease expired first (what was read is void)."""
        request = pb.AcquireRequest(
            namespace=namespace, keys=list(keys), session=session or "", stop_at_miss=stop_at_miss
        )
        reply = self._call(self._kv.Acquire, request)
        lease = pb.LeaseRequest(lease_id=reply.lease_id)
        if self._stale(segments, reply):
            return None
        try:
            blocks = core.read_leased(segments, reply, keys, into)
        finally:
            valid = self._call(self._kv.Release, lease).valid
        return blocks if valid else None

    def lookup(
        self,
        namespace: str,
        *,
        keys: Sequence[bytes] | None = None,
        tokens: Sequence[int] | None = None,
        session: str | None = None,
    ) -> LookupResult:
        reply = self._call(self._kv.Lookup, core.lookup_request(namespace, keys, tokens, session))
        return core.lookup_result(reply, keys)

    def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._call(self._kv.Delete, pb.DeleteRequest(namespace=namespace, keys=list(keys))).deleted

    def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._call(self._kv.Pin, pb.PinRequest(namespace=namespace, keys=list(keys))).blocks

    def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        return self._call(self._kv.Unpin, pb.PinRequest(namespace=namespace, keys=list(keys))).blocks

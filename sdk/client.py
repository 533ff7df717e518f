"""Synchronous client. Its twin, `AsyncClient`, has the same methods as coroutines."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from kvstore.sdk import core
from kvstore.sdk.core import LookupResult, NamespaceInfo, StoredBlock

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class Client:
    """Blocks in and out of a kvstore server.

    >>> with Client("127.0.0.1:50551") as kv:
    ...     keys = kv.keys_for("default", tokens)
    ...     kv.put("default", keys, blocks)          # bytes or torch tensors
    ...     kv.lookup("default", tokens=tokens).prefix_blocks
    """

    def __init__(
        self,
        address: str = core.DEFAULT_ADDRESS,
        timeout: float | None = 30.0,
        max_message_bytes: int = core.DEFAULT_MAX_MESSAGE,
    ) -> None:
        self.address = address
        self.timeout = timeout
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
        """Store a chain of blocks; returns the tier each landed in. `metas`: opaque bytes kept with
        each block (returned by `fetch`) instead of the SDK's tensor description."""
        requests = core.put_requests(namespace, keys, blocks, parent, session, pin, metas)
        return list(self._call(self._kv.Put, requests).tiers)

    def get(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[Any]:
        """Blocks in key order (bytes, or tensors when put as tensors); None where not stored."""
        replies = self._call(self._kv.Get, core.get_request(namespace, keys, session, stop_at_miss))
        try:
            return core.fill_misses(keys, list(replies))
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

    def fetch(
        self, namespace: str, keys: Sequence[bytes], *, session: str | None = None, stop_at_miss: bool = False
    ) -> list[StoredBlock | None]:
        """Blocks as stored (bytes, meta, tier) in key order; None where not stored."""
        replies = self._call(self._kv.Get, core.get_request(namespace, keys, session, stop_at_miss))
        try:
            return core.stored_blocks(keys, list(replies))
        except grpc.RpcError as exc:
            raise core.translate(exc) from None

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

"""What the sync and async clients share: addresses, request building, reply parsing, errors.

The two clients differ only in how they wait on the channel (httpx's sync/async twins are the
model), so everything that is not waiting lives here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from kvstore.sdk import tensors

from kvstore import errors
from kvstore.hashing import chain_keys
from kvstore.v1 import kvstore_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50551"
DEFAULT_MAX_MESSAGE = 256 * 2**20


@dataclass(frozen=True)
class NamespaceInfo:
    name: str
    model: str
    tenant: str
    block_tokens: int
    block_bytes: int
    hash: str
    seed: bytes

    def chain_keys(self, tokens: Sequence[int]) -> list[bytes]:
        """Keys of the full blocks of `tokens`, as the server computes them."""
        return chain_keys(self.seed, tokens, self.block_tokens, self.hash)


@dataclass(frozen=True)
class LookupResult:
    prefix_blocks: int
    tiers: list[str]
    blocks_per_tier: dict[str, int]
    keys: list[bytes]


def target(address: str) -> str:
    """gRPC target for 'host:port' or 'unix:///path' (a bare '/path' is read as a Unix socket)."""
    return f"unix://{address}" if address.startswith("/") else address


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


_ERRORS = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument,
        errors.NotFound,
        errors.ResourceExhausted,
        errors.FailedPrecondition,
        errors.Unavailable,
    )
}


def translate(exc: grpc.RpcError) -> errors.KVStoreError:
    """The kvstore error for a failed call, carrying the server's message."""
    code = exc.code()
    cls = _ERRORS.get(code.name, errors.KVStoreError)
    err = cls(f"{code.name}: {exc.details()}")
    err.code = code.name
    return err


@dataclass(frozen=True)
class StoredBlock:
    """A block as stored: its bytes, the opaque meta it was put with, and the tier it came from."""

    data: bytes
    meta: bytes
    tier: str


def put_requests(
    namespace: str,
    keys: Sequence[bytes],
    blocks: Sequence[Any],
    parent: bytes | None,
    session: str | None,
    pin: bool,
    metas: Sequence[bytes] | None = None,
) -> Iterator[pb.PutRequest]:
    """One request per block; each block's parent is the previous key of the chain. `metas`, when
    given, is kept with each block instead of the SDK's tensor description."""
    if len(keys) != len(blocks) or (metas is not None and len(metas) != len(keys)):
        raise ValueError(
            f"{len(keys)} keys, {len(blocks)} blocks, {len(metas or keys)} metas: they must match"
        )
    prev = parent or b""
    for i, (key, block) in enumerate(zip(keys, blocks, strict=True)):
        data, meta = tensors.encode(block)
        if metas is not None:
            meta = metas[i]
        yield pb.PutRequest(
            namespace=namespace, key=key, parent=prev, data=data, meta=meta, session=session or "", pin=pin
        )
        prev = key


def get_request(
    namespace: str, keys: Sequence[bytes], session: str | None, stop_at_miss: bool
) -> pb.GetRequest:
    return pb.GetRequest(
        namespace=namespace, keys=list(keys), session=session or "", stop_at_miss=stop_at_miss
    )


def get_result(reply: pb.GetResponse) -> Any:
    return tensors.decode(reply.data, reply.meta) if reply.found else None


def stored_blocks(keys: Sequence[bytes], found: Iterable[pb.GetResponse]) -> list[StoredBlock | None]:
    out: list[StoredBlock | None] = [StoredBlock(r.data, r.meta, r.tier) if r.found else None for r in found]
    return out + [None] * (len(keys) - len(out))


def fill_misses(keys: Sequence[bytes], found: Iterable[pb.GetResponse]) -> list[Any]:
    """Results in key order; keys after a stop_at_miss cut read as None."""
    by_position = [get_result(r) for r in found]
    return by_position + [None] * (len(keys) - len(by_position))


def lookup_request(
    namespace: str, keys: Sequence[bytes] | None, tokens: Sequence[int] | None, session: str | None
) -> pb.LookupRequest:
    if (keys is None) == (tokens is None):
        raise ValueError("pass exactly one of keys= or tokens=")
    return pb.LookupRequest(
        namespace=namespace, keys=list(keys or ()), tokens=list(tokens or ()), session=session or ""
    )


def lookup_result(reply: pb.LookupResponse, keys: Sequence[bytes] | None) -> LookupResult:
    return LookupResult(
        reply.prefix_blocks,
        list(reply.tiers),
        dict(reply.blocks_per_tier),
        list(keys) if keys is not None else list(reply.keys),
    )


def namespace_result(reply: pb.NamespaceInfo) -> NamespaceInfo:
    return NamespaceInfo(
        reply.name, reply.model, reply.tenant, reply.block_tokens, reply.block_bytes, reply.hash, reply.seed
    )

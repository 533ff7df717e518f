"""What the sync and async clients share: addresses, request building, reply parsing, errors.

The two clients differ only in how they wait on the channel (httpx's sync/async twins are the
model), so everything that is not waiting lives here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import xxhash
from kvstore.sdk import shm, tensors

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
        errors.Unauthenticated,
        errors.PermissionDenied,
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

    data: Any  # bytes (bytearray for a tensor's bytes read from shared memory), or the caller's buffer
    meta: bytes
    tier: str


@dataclass(frozen=True)
class ChainBlock:
    """A block to put, with its parent made explicit (so any subset can be sent on its own)."""

    key: bytes
    parent: bytes
    data: Any  # the caller's block (bytes-like or tensor)
    meta: bytes | None  # None: the SDK's tensor description


def chain_blocks(
    keys: Sequence[bytes],
    blocks: Sequence[Any],
    parent: bytes | None,
    metas: Sequence[bytes] | None = None,
) -> list[ChainBlock]:
    """Each block's parent is the previous key of the chain. `metas`, when given, is kept with each
    block instead of the SDK's tensor description."""
    if len(keys) != len(blocks) or (metas is not None and len(metas) != len(keys)):
        raise ValueError(
            f"{len(keys)} keys, {len(blocks)} blocks, {len(metas or keys)} metas: they must match"
        )
    parents = [parent or b"", *keys[:-1]]
    return [
        ChainBlock(key, prev, block, metas[i] if metas is not None else None)
        for i, (key, prev, block) in enumerate(zip(keys, parents, blocks, strict=True))
    ]


def put_requests(
    namespace: str, blocks: Sequence[ChainBlock], session: str | None, pin: bool
) -> Iterator[pb.PutRequest]:
    """One request per block."""
    for b in blocks:
        data, meta = tensors.encode(b.data)
        yield pb.PutRequest(
            namespace=namespace,
            key=b.key,
            parent=b.parent,
            data=data,
            meta=meta if b.meta is None else b.meta,
            session=session or "",
            pin=pin,
        )


# ---------------------------------------------------------------- shared-memory data plane


class ChangedInPlace(Exception):
    """A block copied out of shared memory does not match the checksum it was stored with (its
    slot was written after its commit): what was read is void; read over gRPC instead."""


class LeaseRunningOut(Exception):
    """Too little of a write lease is left to copy safely: give it back and use gRPC."""


# Stop writing into a lease's slots once this fraction of its time has gone, so a slow client
# never writes into a slot the server already took back.
LEASE_SAFETY = 0.5


def reserve_request(
    namespace: str, blocks: Sequence[ChainBlock], session: str | None, pin: bool
) -> tuple[pb.ReserveRequest, list[memoryview]]:
    headers, views = [], []
    for b in blocks:
        view, meta = tensors.encode_view(b.data)
        views.append(view)
        headers.append(
            pb.BlockHeader(
                key=b.key, parent=b.parent, meta=meta if b.meta is None else b.meta, size=view.nbytes
            )
        )
    return pb.ReserveRequest(namespace=namespace, blocks=headers, session=session or "", pin=pin), views


def write_slots(
    segments: shm.Segments, reply: pb.ReserveResponse, views: Sequence[memoryview], deadline: float
) -> list[int]:
    """Copy each block into its slot; returns the positions the server had no room for."""
    no_room = []
    for i, (slot, view) in enumerate(zip(reply.slots, views, strict=True)):
        if slot.state == pb.SLOT_NO_ROOM:
            no_room.append(i)
        elif slot.state == pb.SLOT_WRITE:
            if time.monotonic() > deadline:
                raise LeaseRunningOut(f"lease {reply.lease_id} is running out")
            shm.copy_into(segments.view(slot.segment, slot.offset, slot.size), view)
    return no_room


def lease_deadline(started: float, reply: pb.ReserveResponse) -> float:
    return started + reply.expires_in_s * LEASE_SAFETY


def read_leased(
    segments: shm.Segments,
    reply: pb.AcquireResponse,
    keys: Sequence[bytes],
    into: Sequence[Any] | None = None,
) -> list[StoredBlock | None]:
    """Copy leased blocks out (into `into`'s buffers when given: data is then that buffer).
    Each copy from shared memory is checked against the block's checksum (XXH3-64: a twentieth of
    the copy's cost); ChangedInPlace when one fails."""
    out: list[StoredBlock | None] = []
    for i, b in enumerate(reply.blocks):
        if not b.found:
            out.append(None)
            continue
        src = memoryview(b.data) if b.inline else segments.view(b.segment, b.offset, b.size)
        if into is not None:
            dst = tensors.writable_view(into[i])
            if dst.nbytes != src.nbytes:
                raise ValueError(f"buffer #{i} has {dst.nbytes} bytes; the block has {src.nbytes}")
            dst[:] = src
            copy: Any = dst
            out.append(StoredBlock(into[i], b.meta, b.tier))
        elif tensors.is_tensor_meta(b.meta):
            copy = bytearray(src)
            out.append(StoredBlock(copy, b.meta, b.tier))  # decode shares a bytearray
        else:
            copy = bytes(src)
            out.append(StoredBlock(copy, b.meta, b.tier))
        if not b.inline and b.HasField("checksum") and xxhash.xxh3_64_intdigest(copy) != b.checksum:
            raise ChangedInPlace(f"block {b.key.hex()} changed in shared memory since it was stored")
    return out + [None] * (len(keys) - len(out))


def copy_stored(blocks: Sequence[StoredBlock | None], into: Sequence[Any]) -> list[StoredBlock | None]:
    """Blocks read over gRPC, copied into the caller's buffers (the gRPC twin of `read_leased`)."""
    out: list[StoredBlock | None] = []
    for i, b in enumerate(blocks):
        if b is None:
            out.append(None)
            continue
        dst = tensors.writable_view(into[i])
        if dst.nbytes != len(b.data):
            raise ValueError(f"buffer #{i} has {dst.nbytes} bytes; the block has {len(b.data)}")
        dst[:] = memoryview(b.data)
        out.append(StoredBlock(into[i], b.meta, b.tier))
    return out


def decoded(blocks: Sequence[StoredBlock | None]) -> list[Any]:
    return [tensors.decode(b.data, b.meta) if b is not None else None for b in blocks]


def get_request(
    namespace: str, keys: Sequence[bytes], session: str | None, stop_at_miss: bool
) -> pb.GetRequest:
    return pb.GetRequest(
        namespace=namespace, keys=list(keys), session=session or "", stop_at_miss=stop_at_miss
    )


def stored_blocks(keys: Sequence[bytes], found: Iterable[pb.GetResponse]) -> list[StoredBlock | None]:
    """Blocks in key order; keys after a stop_at_miss cut read as None."""
    out: list[StoredBlock | None] = [StoredBlock(r.data, r.meta, r.tier) if r.found else None for r in found]
    return out + [None] * (len(keys) - len(out))


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


@dataclass(frozen=True)
class Candidate:
    """A worker to send a request to: where, how much of the prompt's prefix it can serve (blocks
    per tier), its load (pending tokens) and its cost (kvstore/routing.py; lower is better)."""

    worker: str
    address: str
    prefix_blocks: dict[str, int]
    load: float
    cost: float
    uncovered_tokens: int

    @property
    def cached_blocks(self) -> int:
        return sum(self.prefix_blocks.values())


@dataclass(frozen=True)
class RouteResult:
    candidates: list[Candidate]  # best first
    chain_blocks: int
    index_used: bool  # False: the server could not read the global index (this worker only)
    keys: list[bytes]


def route_request(
    namespace: str,
    keys: Sequence[bytes] | None,
    tokens: Sequence[int] | None,
    load_weight: float | None,
    limit: int,
) -> pb.RouteRequest:
    if (keys is None) == (tokens is None):
        raise ValueError("pass exactly one of keys= or tokens=")
    request = pb.RouteRequest(
        namespace=namespace, keys=list(keys or ()), tokens=list(tokens or ()), limit=limit
    )
    if load_weight is not None:
        request.load_weight = load_weight
    return request


def route_result(reply: pb.RouteResponse, keys: Sequence[bytes] | None) -> RouteResult:
    return RouteResult(
        [
            Candidate(c.worker, c.address, dict(c.prefix_blocks), c.load, c.cost, c.uncovered_tokens)
            for c in reply.candidates
        ],
        reply.chain_blocks,
        reply.index_used,
        list(keys) if keys is not None else list(reply.keys),
    )


@dataclass(frozen=True)
class PlanEvent:
    """A plan the server executed (`WatchPlans`). "warm": `session` is expected back in `due_in_s`
    (from `received`, a time.monotonic() of this process), so its KV should be in the engine by then."""

    kind: str
    session: str
    namespace: str
    due_in_s: float
    bytes: int
    dropped_before: int  # events lost just before this one (this subscriber read too slowly)
    received: float

    @property
    def due_at(self) -> float:
        """time.monotonic() at which the session is expected back."""
        return self.received + self.due_in_s


def watch_request(namespace: str, kinds: Sequence[str]) -> pb.WatchPlansRequest:
    return pb.WatchPlansRequest(namespace=namespace, kinds=list(kinds))


def plan_event(reply: pb.PlanEvent) -> PlanEvent:
    return PlanEvent(
        reply.kind,
        reply.session,
        reply.namespace,
        reply.due_in_s,
        reply.bytes,
        reply.dropped_before,
        time.monotonic(),
    )


def stream_ended(exc: grpc.RpcError, for_s: float | None) -> bool:
    """A plan stream that ran its `for_s` ended as asked; anything else is an error."""
    return for_s is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def namespace_result(reply: pb.NamespaceInfo) -> NamespaceInfo:
    return NamespaceInfo(
        reply.name, reply.model, reply.tenant, reply.block_tokens, reply.block_bytes, reply.hash, reply.seed
    )

"""Where things live in Redis: key names and the value format of a remote block.

    kvs:<tenant>:<namespace>:b:<key hex>   a block: header + parent + meta + payload (one string)
    kvs:<tenant>:<namespace>:i:<key hex>   global index: HASH {worker_id: tier}, TTL INDEX_TTL_S
    kvs:w:<worker_id>                      worker record: HASH {address, load, updated}, TTL WORKER_TTL_S
    kvs:workers                            ZSET {worker_id: updated}: who to look up

Names are percent-encoded, so no name can end one field early (`:`) or form a Redis Cluster hash
tag (`{...}`, which would put every key of a tenant in one slot); keys spread over the cluster's
slots by their hex. A block's value is checked on read: a wrong magic, length, size or checksum
(zlib.crc32 over parent, meta and payload, the disk tier's checksum) makes it a miss.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kvstore.hashing import Namespace

PREFIX = "kvs"
WORKERS = f"{PREFIX}:workers"
HEARTBEAT_S = 2.0
WORKER_TTL_S = 3 * HEARTBEAT_S  # a worker that missed three heartbeats is gone
INDEX_TTL_S = 300  # an index entry nobody refreshes expires (its worker died or lost Redis)

MAGIC, VERSION = b"KVR1", 1
# magic, version, parent length, meta length, payload size, crc32
HEADER = struct.Struct("<4sBHIQI")


def _name(text: str) -> str:
    return quote(text, safe="")


def ns_prefix(ns: Namespace) -> str:
    return f"{PREFIX}:{_name(ns.tenant)}:{_name(ns.name)}"


def block_key(ns: Namespace, key: bytes) -> str:
    return f"{ns_prefix(ns)}:b:{key.hex()}"


def index_key(ns: Namespace, key: bytes) -> str:
    return f"{ns_prefix(ns)}:i:{key.hex()}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:w:{_name(worker_id)}"


@dataclass(slots=True)
class RemoteBlock:
    parent: bytes | None
    meta: bytes
    data: bytes


class BadValue(ValueError):
    """A stored value that is not a whole, intact block of the expected size."""


def encode(parent: bytes | None, meta: bytes, payload: Any) -> bytes:
    view = memoryview(payload).cast("B")
    parent = parent or b""
    crc = zlib.crc32(view, zlib.crc32(meta, zlib.crc32(parent)))
    header = HEADER.pack(MAGIC, VERSION, len(parent), len(meta), len(view), crc)
    return b"".join((header, parent, meta, view))


def decode(raw: bytes, size: int) -> RemoteBlock:
    """The block in `raw`, which must carry exactly `size` payload bytes; BadValue otherwise."""
    if len(raw) < HEADER.size:
        raise BadValue("shorter than a header")
    magic, version, parent_len, meta_len, payload, crc = HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        raise BadValue("not a kvstore block")
    start = HEADER.size + parent_len + meta_len
    if payload != size or len(raw) != start + payload:
        raise BadValue(f"{len(raw) - start} payload bytes, expected {size}")
    view = memoryview(raw)
    if zlib.crc32(view[HEADER.size :]) != crc:
        raise BadValue("checksum mismatch")
    parent = bytes(view[HEADER.size : HEADER.size + parent_len]) or None
    meta = bytes(view[HEADER.size + parent_len : start])
    return RemoteBlock(parent, meta, bytes(view[start:]))

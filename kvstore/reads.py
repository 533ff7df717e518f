"""The store's read path: Get and Acquire's read loop (bytes copied out off the lock, or blocks
held in their shared-memory slots), its read-through to the remote tier, and the remote tier
writer's read-back of what a put stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvstore.errors import KVStoreError
from kvstore.index import BlockEntry
from kvstore.sessions import Session
from kvstore.tiers.base import checksum

if TYPE_CHECKING:
    from kvstore.store import Store


@dataclass(slots=True)
class Read:
    """One block read: its bytes, or (`held`) the block itself, left in its shared-memory slot with a
    reader count the caller must give back (`Store.release`)."""

    key: bytes
    meta: bytes
    tier: str
    data: bytes | None = None
    held: BlockEntry | None = None


def get(
    store: Store,
    namespace: str,
    keys: Sequence[bytes],
    session: str | None,
    stop_at_miss: bool,
    hold: frozenset[str],
) -> list[Read | None]:
    """Read blocks (Store.get). Each found block gets a reader count under the lock, so nothing
    frees or moves it while its bytes are copied out off the lock; the counts of the blocks not
    held are given back, under the lock again, with the hits and misses counted."""
    store.check.namespace(namespace)
    store.check.keys(keys)
    store.check.session(session)
    placement = store.placement
    with store.lock:
        if session:
            store.check_session_locked(session, namespace)
        blocks = store.index.blocks(namespace)
        found: list[BlockEntry | None] = []
        for key in keys:
            entry = blocks.get(key)
            found.append(entry)
            if entry is None and stop_at_miss:
                break
        # What would be copied out, repeats included (blocks held in their slots cost nothing).
        store.check.get_bytes(sum(e.size for e in found if e is not None and e.tier not in hold))
        for entry in found:
            if entry is not None:
                entry.readers += 1  # nothing frees or moves it while it is read
    out: list[Read | None] = []
    for key, entry in zip(keys, found, strict=False):
        if entry is not None and entry.tier in hold:
            out.append(Read(key, entry.meta, entry.tier, held=entry))
            continue
        data = placement.read(entry) if entry is not None else None
        out.append(None if data is None else Read(key, entry.meta, entry.tier, data=data))  # type: ignore[union-attr]
        if data is None and stop_at_miss:
            break
    fetched = _read_remote(store, namespace, keys, found, out, stop_at_miss)
    promote: list[tuple[BlockEntry, bytes | None]] = []
    with store.lock:
        for i, entry in enumerate(found):
            read = out[i] if i < len(out) else None
            if entry is not None and (read is None or read.held is None):
                entry.readers -= 1
        now = store.clock.now()
        try:  # checked again (PermissionDenied): the session may have changed hands meanwhile
            active = store.active_session_locked(session, namespace, now) if session else None
        except KVStoreError:  # the caller gets no reads to release: give back the held ones
            for read in out:
                if read is not None and read.held is not None:
                    read.held.readers -= 1
            raise
        for i, entry in enumerate(found):
            read = out[i] if i < len(out) else None
            if i >= len(out):
                continue  # after a stop: neither a hit nor a miss
            if read is None:
                store.misses += 1
            elif entry is not None and _served_locked(store, entry, active, now) and read.held is None:
                promote.append((entry, read.data))
    for entry, data in promote:
        placement.move(entry, 0, data=data)
    for entry, data in fetched:  # a copy in the local tiers: the next read stays on this host
        placement.place(entry, data)
    return out


def _read_remote(
    store: Store,
    namespace: str,
    keys: Sequence[bytes],
    found: list[BlockEntry | None],
    out: list[Read | None],
    stop_at_miss: bool,
) -> list[tuple[BlockEntry, bytes]]:
    """Fill the misses of a read from the remote tier (off the lock), within the call's byte
    limit; returns the blocks read, as new entries to place in the local tiers."""
    remote = store.remote
    if remote is None or all(r is not None for r in out):
        return []
    if stop_at_miss:  # the local read stopped at its first miss: read on from there
        wanted = list(range(len(out) - 1, len(keys)))
    else:
        wanted = [i for i, r in enumerate(out) if r is None]
    size = store.namespaces[namespace].block_bytes
    copied = sum(len(r.data) for r in out if r is not None and r.data is not None)
    wanted = wanted[: max(0, store.check.limits.max_get_bytes - copied) // size]
    blocks = remote.fetch(namespace, [keys[i] for i in wanted])
    fetched = []
    for i, block in zip(wanted, blocks, strict=True):
        if block is None and stop_at_miss:
            break
        if block is None:
            continue
        read = Read(keys[i], block.meta, remote.name, data=block.data)
        if i < len(out):
            out[i] = read
        else:  # past the local stop: counted by the remote tier, not as a local hit
            out.append(read)
        entry = BlockEntry(namespace, keys[i], block.parent, size, "", meta=block.meta)
        if store.placement.checksums:  # its bytes passed Redis's check: from here on, its own
            entry.checksum = checksum(block.data)
        fetched.append((entry, block.data))
    return fetched


def _served_locked(store: Store, entry: BlockEntry, session: Session | None, now: float) -> bool:
    """Account a read of `entry`; True when the policy wants it promoted to the top tier."""
    store.placement.counters[entry.tier].hits += 1
    store.placement.touch_locked(entry, now)
    if session is not None:
        store.sessions.ref(entry, session)
    return (
        store.promote_on_get
        and entry.tier != store.tiers[0].name
        and entry.pins == 0  # a pinned block stays where it was pinned
        and store.policy.promote_on_get(entry)
    )


def read_local(store: Store, namespace: str, key: bytes) -> tuple[bytes | None, bytes, bytes] | None:
    """A stored block's parent, meta and bytes (Store.read_local), read with a reader count held."""
    with store.lock:
        entry = store.index.get(namespace, key)
        if entry is None:
            return None
        entry.readers += 1
    try:
        data = store.placement.read(entry)
    finally:
        with store.lock:
            entry.readers -= 1
    return None if data is None else (entry.parent, entry.meta, data)

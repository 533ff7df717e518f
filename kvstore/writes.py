"""The store's write path: a Put's room check, its blocks placed one by one (bytes copied off the
lock), and, when its caller gives up before the answer is committed, everything it did taken
back, so a Put nobody waits for leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore.errors import Cancelled, KVStoreError, ResourceExhausted
from kvstore.index import BlockEntry
from kvstore.sessions import Session
from kvstore.tiers.base import as_buffer, checksum

if TYPE_CHECKING:
    from kvstore.store import PutBlock, Store


@dataclass(slots=True)
class _Undo:
    """What one put did, to take back if its caller gives up before it is committed."""

    added: list[BlockEntry] = field(default_factory=list)
    pins: list[BlockEntry] = field(default_factory=list)
    refs: list[tuple[BlockEntry, Session]] = field(default_factory=list)
    opened: list[str] = field(default_factory=list)


def put(store: Store, blocks: Sequence[PutBlock], gave_up: Callable[[], bool] | None = None) -> list[str]:
    """Store blocks; returns the tier each landed in ('' when it could not be placed).

    `gave_up`: whether the caller stopped waiting (a cancelled or timed-out RPC). It is asked
    before each block and, last, under the lock that commits the answer; once it says yes,
    what this call stored, pinned, referenced or opened is taken back and `Cancelled` raised,
    so a Put nobody waits for leaves nothing behind."""
    store.check.count(len(blocks), "blocks")
    for i, block in enumerate(blocks):
        store.check.block(block.namespace, block.key, block.parent, block.meta, len(as_buffer(block.data)), i)
        store.check.session(block.session)
    placement = store.placement
    with store.lock:
        _check_room_locked(store, blocks)
        for b in blocks:
            if b.session and b.session in store.sessions.sessions:
                store.check_session_locked(b.session, b.namespace)  # not another tenant's
        for tenant, sessions in _sessions_by_tenant(store, blocks).items():
            store.sessions.check_room(sessions, tenant)
        new = {(b.namespace, b.key): b for b in blocks if store.index.get(b.namespace, b.key) is None}
    if gave_up is not None and gave_up():
        raise Cancelled("the caller gave up on this put before it was stored")
    placement.make_room(0, sum(store.namespaces[ns].block_bytes for ns, _ in new))  # one pass of victims
    undo = _Undo()
    try:
        entries = _place_all(store, blocks, gave_up, undo)
    except KVStoreError:  # a session that changed hands meanwhile: PermissionDenied, nothing kept
        with store.lock:
            dropped = _undo_locked(store, undo)
        _forget_remote(store, dropped)
        raise
    with store.lock:  # where each is now: a big batch may have pushed its own first blocks down or out
        if gave_up is None or not gave_up():
            return [e.tier if e is not None and placement.held_locked(e) else "" for e in entries]
        dropped = _undo_locked(store, undo)
    _forget_remote(store, dropped)
    raise Cancelled("the caller gave up on this put before it was stored")


def _place_all(
    store: Store,
    blocks: Sequence[PutBlock],
    gave_up: Callable[[], bool] | None,
    undo: _Undo,
) -> list[BlockEntry | None]:
    """Place each block and claim it for its session and pin, recording what to take back."""
    placement = store.placement
    entries: list[BlockEntry | None] = []
    active: dict[str, Session] = {}  # each session named resolved once per call
    for b in blocks:
        if gave_up is not None and gave_up():
            break
        with store.lock:
            now = store.clock.now()
            stored = store.index.get(b.namespace, b.key)
            if stored is not None:
                placement.touch_locked(stored, now)
        if stored is None:
            size = store.namespaces[b.namespace].block_bytes  # validated: the data's size
            digest = checksum(b.data) if placement.checksums else None  # carried with the block from now on
            fresh = BlockEntry(
                b.namespace, b.key, b.parent or None, size, "", meta=b.meta, last_use=now, checksum=digest
            )
            stored = placement.place(fresh, b.data)
            if stored is fresh:
                undo.added.append(fresh)
        if stored is not None:
            with store.lock:
                session = None
                if b.session:
                    session = active.get(b.session)
                    if session is None:
                        if b.session not in store.sessions.sessions:
                            undo.opened.append(b.session)
                        session = active[b.session] = store.active_session_locked(b.session, b.namespace, now)
                    if stored.sessions is None or session.id not in stored.sessions:
                        undo.refs.append((stored, session))
                store.claim_locked(stored, session, b.pin)
                if b.pin:
                    undo.pins.append(stored)
        entries.append(stored)
    return entries


def add_written(
    store: Store,
    namespace: str,
    written: Sequence[tuple[BlockEntry | None, bytes]],
    session_id: str | None,
    pin: bool,
    gave_up: Callable[[], bool] | None = None,
) -> list[BlockEntry | None]:
    """A Commit: index the blocks written into their reserved slots (Store.add_written). Its
    caller giving up takes it back as for a put; the slots of blocks not indexed are freed."""
    undo = _Undo()
    out: list[BlockEntry | None] = []
    if gave_up is not None and gave_up():
        _free_slots(store, [entry for entry, _ in written])
        raise Cancelled("the caller gave up on this commit before it was stored")
    session: Session | None = None
    for i, (entry, key) in enumerate(written):
        if gave_up is not None and gave_up():
            _free_slots(store, [e for e, _ in written[i:]])
            break
        if entry is not None and store.placement.checksums:  # the slot is the lease's: no lock needed
            entry.checksum = store.tier_by_name[entry.tier].checksum(entry)
        try:
            session = _index_written(store, namespace, entry, key, session_id, session, pin, undo, out)
        except KVStoreError:  # the session changed hands since Reserve: PermissionDenied, nothing kept
            _free_slots(store, [e for e, _ in written[i + 1 :]])
            with store.lock:
                dropped = _undo_locked(store, undo)
            _forget_remote(store, dropped)
            raise
    with store.lock:
        if gave_up is None or not gave_up():
            return out
        dropped = _undo_locked(store, undo)
    _forget_remote(store, dropped)
    raise Cancelled("the caller gave up on this commit before it was stored")


def _index_written(
    store: Store,
    namespace: str,
    entry: BlockEntry | None,
    key: bytes,
    session_id: str | None,
    session: Session | None,
    pin: bool,
    undo: _Undo,
    out: list[BlockEntry | None],
) -> Session | None:
    """One block of a commit, indexed (or counted as put again); returns the commit's session."""
    placement = store.placement
    with store.lock:
        now = store.clock.now()
        stored = store.index.get(namespace, key)
        if entry is not None and stored is None:
            entry.last_use = now
            placement.add_locked(entry)
            stored = entry
            undo.added.append(entry)
        elif entry is not None:
            placement.free_locked(store.tier_by_name[entry.tier], entry)
        if stored is not None:
            placement.touch_locked(stored, now)
            if session_id and session is None:
                if session_id not in store.sessions.sessions:
                    undo.opened.append(session_id)
                session = store.active_session_locked(session_id, namespace, now)
            if session is not None and (stored.sessions is None or session.id not in stored.sessions):
                undo.refs.append((stored, session))
            store.claim_locked(stored, session, pin)
            if pin:
                undo.pins.append(stored)
    out.append(stored)
    return session


def _free_slots(store: Store, entries: Sequence[BlockEntry | None]) -> None:
    with store.lock:
        for entry in entries:
            if entry is not None:
                store.placement.free_locked(store.tier_by_name[entry.tier], entry)


def _undo_locked(store: Store, undo: _Undo) -> list[BlockEntry]:
    """Take back what a put did that its caller gave up on: its pins, its session references,
    the sessions it opened, and the blocks it added that nobody else has claimed meanwhile
    (returned: write-through may have sent them to the shared tier already)."""
    placement = store.placement
    for entry in undo.pins:
        if placement.held_locked(entry) and entry.pins - entry.fanout_pins > 0:
            placement.unpin_locked(entry)
    for entry, session in undo.refs:
        store.sessions.unref(entry, session)
    for sid in undo.opened:
        session = store.sessions.sessions.get(sid)
        if session is not None and session.blocks == 0 and session.fanout is None:
            store.sessions.close(session)
    dropped = []
    for entry in undo.added:
        if placement.held_locked(entry) and entry.movable and not entry.sessions:
            placement.drop_locked(entry, count=False)
            dropped.append(entry)
    return dropped


def _forget_remote(store: Store, dropped: Sequence[BlockEntry]) -> None:
    """Delete blocks a write took back from the shared tier too (off the lock: a round trip)."""
    if store.remote is None:
        return
    by_namespace: dict[str, list[bytes]] = {}
    for entry in dropped:
        by_namespace.setdefault(entry.namespace, []).append(entry.key)
    for namespace, keys in by_namespace.items():
        store.remote.delete(namespace, keys)


def _sessions_by_tenant(store: Store, blocks: Sequence[PutBlock]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for b in blocks:
        if b.session:
            out.setdefault(store.namespaces[b.namespace].tenant, set()).add(b.session)
    return out


def check_quota_locked(store: Store, tenant: str, pinned_new: int, largest_unpinned: int) -> None:
    """ResourceExhausted when `tenant`'s quota, less what it has pinned, cannot take these."""
    pinned = store.placement.pinned_bytes
    store.placement.quotas.check_pinned(
        tenant, ((t.name, t.capacity - pinned[t.name]) for t in store.tiers), pinned_new, largest_unpinned
    )


def _check_room_locked(store: Store, blocks: Sequence[PutBlock]) -> None:
    """ResourceExhausted unless the new pinned blocks, plus any one unpinned block, fit beside
    what is pinned already (unpinned blocks of a batch may push each other down and out), in the
    tiers and in each tenant's quota."""
    pinned_new, largest_unpinned, seen = 0, 0, set()
    per_tenant: dict[str, list[int]] = {}  # tenant -> [pinned new, largest unpinned]
    for b in blocks:
        if (b.namespace, b.key) in seen or store.index.get(b.namespace, b.key) is not None:
            continue
        seen.add((b.namespace, b.key))
        ns = store.namespaces[b.namespace]
        row = per_tenant.setdefault(ns.tenant, [0, 0])
        if b.pin:
            pinned_new += ns.block_bytes
            row[0] += ns.block_bytes
        else:
            largest_unpinned = max(largest_unpinned, ns.block_bytes)
            row[1] = max(row[1], ns.block_bytes)
    for tenant, (tenant_pinned, tenant_unpinned) in per_tenant.items():
        check_quota_locked(store, tenant, tenant_pinned, tenant_unpinned)
    room = sum(t.capacity - store.placement.pinned_bytes[t.name] for t in store.tiers)
    if pinned_new + largest_unpinned > room:
        raise ResourceExhausted(
            f"put needs room for {pinned_new + largest_unpinned} bytes but only {room} bytes of the "
            "tiers are not pinned; unpin blocks or raise tier capacities"
        )

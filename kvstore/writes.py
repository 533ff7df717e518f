"""The store's write path: a Put's room check, its blocks placed one by one (bytes copied off the
lock), and, when its caller gives up before the answer is committed, everything it did taken
back, so a Put nobody waits for leaves nothing behind."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvstore.errors import Cancelled, ResourceExhausted
from kvstore.index import BlockEntry
from kvstore.sessions import Session
from kvstore.tiers.base import as_buffer

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
        store.sessions.check_room(b.session for b in blocks if b.session)
        new = {(b.namespace, b.key): b for b in blocks if store.index.get(b.namespace, b.key) is None}
    if gave_up is not None and gave_up():
        raise Cancelled("the caller gave up on this put before it was stored")
    placement.make_room(0, sum(store.namespaces[ns].block_bytes for ns, _ in new))  # one pass of victims
    entries: list[BlockEntry | None] = []
    active: dict[str, Session] = {}  # each session named resolved once per call
    undo = _Undo()
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
            fresh = BlockEntry(b.namespace, b.key, b.parent or None, size, "", meta=b.meta, last_use=now)
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
    with store.lock:  # where each is now: a big batch may have pushed its own first blocks down or out
        if gave_up is not None and gave_up():
            _undo_locked(store, undo)
            raise Cancelled("the caller gave up on this put before it was stored")
        return [e.tier if e is not None and placement.held_locked(e) else "" for e in entries]


def _undo_locked(store: Store, undo: _Undo) -> None:
    """Take back what a put did that its caller gave up on: its pins, its session references,
    the sessions it opened, and the blocks it added that nobody else has claimed meanwhile."""
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
    for entry in undo.added:
        if placement.held_locked(entry) and entry.movable and not entry.sessions:
            placement.drop_locked(entry, count=False)


def _check_room_locked(store: Store, blocks: Sequence[PutBlock]) -> None:
    """ResourceExhausted unless the new pinned blocks, plus any one unpinned block, fit beside
    what is pinned already (unpinned blocks of a batch may push each other down and out)."""
    pinned_new, largest_unpinned, seen = 0, 0, set()
    for b in blocks:
        if (b.namespace, b.key) in seen or store.index.get(b.namespace, b.key) is not None:
            continue
        seen.add((b.namespace, b.key))
        size = store.namespaces[b.namespace].block_bytes
        if b.pin:
            pinned_new += size
        else:
            largest_unpinned = max(largest_unpinned, size)
    room = sum(t.capacity - store.placement.pinned_bytes[t.name] for t in store.tiers)
    if pinned_new + largest_unpinned > room:
        raise ResourceExhausted(
            f"put needs room for {pinned_new + largest_unpinned} bytes but only {room} bytes of the "
            "tiers are not pinned; unpin blocks or raise tier capacities"
        )

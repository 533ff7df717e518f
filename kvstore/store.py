"""The store: what engines and the server call — put, read, look up, promote, pin, evict.

Every public method validates its whole input before it changes anything and raises a
`kvstore.errors` exception otherwise, so a refused call leaves the store as it was. Nothing here
knows about gRPC. Where blocks live and how they move is `kvstore.placement`; what hints do to
sessions is `kvstore.hints` and `kvstore.sessions`; plans run in `sessions.actions`.

Threads: every method may be called from any thread. The lock (`Store.lock`, the placement's)
guards the index, the tiers' allocations and counters, the session registry and the plan queue:
bookkeeping only. Bytes are copied and files written without it (a moving block stays readable at
its source and is neither movable nor evictable), so a Lookup waits at most one block's
bookkeeping. The server calls these methods off its event loop (`asyncio.to_thread`; hints on the
hint worker's thread); nothing on the loop takes the lock. Checks live in `validation`, restart
and shutdown in `persistence`, operators' views in `stats`, the put path and its rollback in
`writes`, the read path and its read-through to the remote tier in `reads`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore import reads, writes
from kvstore.errors import FailedPrecondition, InvalidArgument, NotFound, shorten
from kvstore.hashing import Namespace
from kvstore.index import BlockEntry, PrefixMatch
from kvstore.placement import Moved, Placement
from kvstore.sessions import Session
from kvstore.sessions.actions import SessionActions
from kvstore.tenancy import check_tenant
from kvstore.tiers.remote import RemoteTier
from kvstore.validation import Checks, Limits

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PutBlock:
    namespace: str
    key: bytes
    data: Any
    parent: bytes | None = None
    meta: bytes = b""
    session: str | None = None
    pin: bool = False


@dataclass(slots=True)
class Promotion:
    moved: dict[str, int]  # bytes brought up, per source tier
    blocks: int  # leading blocks of the chain that were stored (and pinned, when asked)


class Store:
    def __init__(
        self,
        placement: Placement,
        actions: SessionActions,
        namespaces: Iterable[Namespace],
        promote_on_get: bool = True,
        limits: Limits | None = None,
    ) -> None:
        self.placement = placement
        self.actions = actions
        self.namespaces = {ns.name: ns for ns in namespaces}
        self.check = Checks(self.namespaces, limits)
        self.promote_on_get = promote_on_get
        self.lock = placement.lock
        self.tiers, self.tier_by_name = placement.tiers, placement.tier_by_name
        self.index, self.sessions, self.policy = placement.index, placement.sessions, placement.policy
        self.clock, self.plans, self.links = placement.clock, actions.plans, placement.view.links
        self.counters = placement.counters
        self.plan_feed = actions.feed
        self.misses = self.lookups = self.lookup_hit_blocks = 0
        # The shared tier on Redis, asked after the local tiers (set by kvstore.deployment).
        self.remote: RemoteTier | None = None

    # ------------------------------------------------------------------ lookups of entries

    def _entries_locked(self, namespace: str, keys: Sequence[bytes]) -> list[BlockEntry]:
        """The entries of all `keys`, or NotFound naming the first missing one."""
        blocks = self.index.blocks(namespace)
        entries = [blocks.get(key) for key in keys]
        if None in entries:
            missing = keys[entries.index(None)]
            raise NotFound(f"block {missing.hex()} is not stored in namespace {shorten(namespace)}")
        return entries  # type: ignore[return-value]

    # ------------------------------------------------------------------ writing

    def put(self, blocks: Sequence[PutBlock], gave_up: Callable[[], bool] | None = None) -> list[str]:
        """Store blocks; returns the tier each landed in ('' when it could not be placed).
        `gave_up`: whether the caller stopped waiting; once it says yes, what this call did is
        taken back and `Cancelled` raised (kvstore.writes)."""
        return writes.put(self, blocks, gave_up)

    def claim_locked(self, entry: BlockEntry, session: Session | None, pin: bool) -> None:
        """What a put asks beyond storing: the session that references the block, a pin."""
        if session is not None:
            self.sessions.ref(entry, session)
        if pin:
            self.placement.pin_locked(entry)

    # Slots written in place by same-host clients (kvstore.shm.leases).

    def reserve_shared(self, entry: BlockEntry) -> bool:
        """A slot for `entry` in the fastest shared-memory tier that has or can make room, for a
        client to write in place; it stays out of the index until `add_written`."""
        for level, tier in enumerate(self.tiers):
            if tier.segment is not None and self.placement.reserve(entry, level):
                return True
        return False

    def free_slot(self, entry: BlockEntry) -> None:
        """Give back a slot that was reserved but never indexed (a lease that ended uncommitted)."""
        with self.lock:
            self.placement.free_locked(self.tier_by_name[entry.tier], entry)

    def add_written(
        self,
        namespace: str,
        written: Sequence[tuple[BlockEntry | None, bytes]],
        session: str | None,
        pin: bool,
        gave_up: Callable[[], bool] | None = None,
    ) -> list[BlockEntry | None]:
        """Index blocks clients wrote into their slots (`entry`, key), or count a block stored
        already as put again (entry None); a key stored meanwhile by another writer keeps that one.
        `gave_up`: as for `put`, what this did is taken back once its caller stopped waiting."""
        return writes.add_written(self, namespace, written, session, pin, gave_up)

    # ------------------------------------------------------------------ reading

    def get(
        self,
        namespace: str,
        keys: Sequence[bytes],
        session: str | None = None,
        stop_at_miss: bool = False,
        hold: frozenset[str] = frozenset(),
    ) -> list[reads.Read | None]:
        """Read blocks (Get, and Acquire's read loop): a block in a tier named in `hold` stays in
        its slot with a reader count the caller gives back with `release`; the others' bytes are
        copied out without the lock. Counts hits and misses, and may promote what was read."""
        return reads.get(self, namespace, keys, session, stop_at_miss, hold)

    def read_local(self, namespace: str, key: bytes) -> tuple[bytes | None, bytes, bytes] | None:
        """A stored block's parent, meta and bytes, or None when it is not stored (the remote
        tier's writer: write-through sends what a put stored, read back here off the lock)."""
        return reads.read_local(self, namespace, key)

    def release(self, entries: Iterable[BlockEntry]) -> None:
        """Give back the reader counts `read(..., hold=...)` left on blocks."""
        with self.lock:
            for entry in entries:
                entry.readers -= 1

    def promote(
        self, namespace: str, keys: Sequence[bytes], session: str | None = None, pin: bool = False
    ) -> Promotion:
        """Bring the stored prefix of `keys` to the top tier without reading it out — what an
        engine does before running a request over it. With `pin`, each block is pinned as it
        lands, so bringing in the rest cannot push it out again. Stops at the first key that is
        not stored."""
        self.check.namespace(namespace)
        self.check.keys(keys)
        self.check.session(session)
        placement, top = self.placement, self.tiers[0].name
        result = Promotion({}, 0)
        with self.lock:
            if session:
                self.check_session_locked(session, namespace)
            now = self.clock.now()
            active = self.active_session_locked(session, namespace, now) if session else None
            blocks, ref = self.index.blocks(namespace), self.sessions.ref
            entries = []
            for key in keys:
                entry = blocks.get(key)
                if entry is None:
                    break
                entries.append(entry)
                placement.touch_locked(entry, now)
                if active is not None:
                    ref(entry, active)
                if pin and entry.tier == top:
                    placement.pin_locked(entry)  # held first, so making room for the rest cannot push it out
            away = [e for e in entries if e.tier != top and e.movable]
        placement.make_room(0, sum(e.size for e in away))  # one pass of victims for the whole chain
        sources = [e.tier for e in away]
        for entry, src, outcome in zip(away, sources, placement.move_many(away, 0, pin=pin), strict=True):
            if outcome is Moved.DONE:
                result.moved[src] = result.moved.get(src, 0) + entry.size
        if pin:
            with self.lock:
                for entry in entries:
                    if entry.tier != top and placement.held_locked(entry):
                        placement.pin_locked(entry)  # could not come up: held where it is
        result.blocks = len(entries)
        return result

    def lookup(self, namespace: str, keys: Sequence[bytes], session: str | None = None) -> PrefixMatch:
        """Longest stored prefix of the chain. With a session (a request starting), the session now
        references exactly that prefix; the blocks it puts next join it."""
        self.check.namespace(namespace)
        self.check.keys(keys)
        self.check.session(session)
        with self.lock:
            if session:
                self.check_session_locked(session, namespace)
            match = self.index.longest_prefix(namespace, keys)
            self.lookups += 1
            self.lookup_hit_blocks += match.blocks
            if session:
                self.sessions.rebind(
                    self.active_session_locked(session, namespace, self.clock.now()), match.entries
                )
        remote = self.remote
        if remote is not None and match.blocks < len(keys):  # off the lock: a network round trip
            match.remote = remote.prefix(namespace, keys[match.blocks :])
            if match.remote:
                match.blocks_per_tier["remote"] = match.remote
                with self.lock:
                    self.lookup_hit_blocks += match.remote
        return match

    def check_session_locked(self, session_id: str, namespace: str) -> None:
        """Before a data-path call changes anything: the session it names may be opened (the
        caps), and is not another tenant's (tenancy; checked under the lock, where it acts)."""
        existing = self.sessions.sessions.get(session_id)
        if existing is not None:
            check_tenant(existing.tenant, f"session {session_id!r}")
        else:
            self.sessions.check_room([session_id], self.namespaces[namespace].tenant)

    def active_session_locked(self, session_id: str, namespace: str, now: float) -> Session:
        """The session a data-path call names (opened on first use): it is back from whatever it
        was away for (which is learned), and whatever was brought back for it has been used.
        PermissionDenied when it is another tenant's (callers checked first; it can have changed
        hands since: they take back what they did)."""
        existing = self.sessions.sessions.get(session_id)
        if existing is not None:
            check_tenant(existing.tenant, f"session {session_id!r}")
        session = self.sessions.open(session_id, namespace, now, self.namespaces[namespace].tenant)
        if session.away is not None or session.tool is not None:
            self.policy.on_resume(session)
        self.sessions.came_back(session, now)
        return session

    # ------------------------------------------------------------------ pins, deletes, evictions

    def delete(self, namespace: str, keys: Sequence[bytes]) -> int:
        self.check.namespace(namespace)
        self.check.keys(keys)
        with self.lock:
            entries = list(
                dict.fromkeys(e for e in (self.index.get(namespace, k) for k in keys) if e is not None)
            )
            _require_movable(entries)
            for entry in entries:
                self.placement.drop_locked(entry, count=False)
        if self.remote is not None:  # a deleted block must not come back from the shared tier
            self.remote.delete(namespace, keys)
        return len(entries)

    def pin(self, namespace: str, keys: Sequence[bytes]) -> int:
        self.check.namespace(namespace)
        self.check.keys(keys)
        with self.lock:
            entries = self._entries_locked(namespace, keys)
            for entry in entries:
                self.placement.pin_locked(entry)
            return len(entries)

    def unpin(self, namespace: str, keys: Sequence[bytes]) -> int:
        self.check.namespace(namespace)
        self.check.keys(keys)
        with self.lock:
            entries = self._entries_locked(namespace, keys)
            times = Counter(map(id, entries)) if len(set(keys)) != len(keys) else None
            for entry in entries:
                # Only clients' pins: a fan-out's are released by its last branch or its TTL.
                if entry.pins - entry.fanout_pins < (times[id(entry)] if times is not None else 1):
                    raise FailedPrecondition(
                        f"block {entry.key.hex()} is not pinned that many times by clients"
                        + (f" ({entry.fanout_pins} pin(s) belong to a fan-out)" if entry.fanout_pins else "")
                    )
            for entry in entries:
                self.placement.unpin_locked(entry)
            return len(entries)

    def evict(
        self,
        namespace: str = "",
        keys: Sequence[bytes] = (),
        tier: str = "",
        nbytes: int = 0,
        drop: bool = False,
    ) -> tuple[int, int]:
        """Demote (or drop) the named blocks, or `nbytes` from `tier` in the policy's order.
        Returns (blocks, bytes) that left their tier."""
        if keys and (tier or nbytes):
            raise InvalidArgument("evict takes either keys or tier + bytes, not both")
        if keys:
            self.check.namespace(namespace)
            self.check.keys(keys)
            with self.lock:
                entries = list(dict.fromkeys(self._entries_locked(namespace, keys)))
                _require_movable(entries)
        else:
            if tier not in self.tier_by_name:
                raise InvalidArgument(
                    f"tier {shorten(tier)} is not one of this store's tiers: {', '.join(self.tier_by_name)}"
                )
            if nbytes <= 0:
                raise InvalidArgument("bytes must be > 0 when evicting from a tier")
            with self.lock:
                entries = self.policy.victims(tier, nbytes) or list(e for e, _ in self.policy.order(tier))
        left = self.placement.evict(entries, drop)
        nbytes = sum(e.size for e in left)
        log.info(
            "%s %d blocks (%d bytes) on request",
            "dropped" if drop else "evicted",
            len(left),
            nbytes,
            extra={"blocks": len(left), "bytes": nbytes, "tier": tier, "drop": drop},
        )
        return len(left), nbytes

    # ------------------------------------------------------------------ plans, shutdown

    def run_due(self) -> int:
        """Run the plans whose time has come (the server's mover thread, the replay's clock)."""
        return self.actions.run_due()

    def close(self) -> None:
        """Save what was learned and release the tiers (flush first with `persistence.flush`; close
        the deployment, if any, first)."""
        self.sessions.returns.save()
        self.placement.copier.close()
        for tier in self.tiers:
            tier.close()


def _require_movable(entries: Sequence[BlockEntry]) -> None:
    busy = next((e for e in entries if not e.movable), None)
    if busy is not None:
        raise FailedPrecondition(f"block {busy.key.hex()} is pinned or being moved; unpin it first")
